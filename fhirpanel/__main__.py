"""`python -m fhirpanel`."""

import sys

from fhirpanel.cli import main

sys.exit(main())
