"""The `fhirpanel` subcommands, one module per group; each has `register(subparsers)` and its
`cmd_*` functions, and `fhirpanel.cli` only builds the parser and dispatches.

    run           run: one full pass (fhirpanel.service.passes)
    sandbox       generate, sandbox: the synthetic population and the local FHIR server
    demo          demo: the sandbox, one run, then the worker and the API (fhirpanel.supervisor)
    refresh       refresh, runs: passes into the state store, and their record
    worker        worker: the scheduler process
    check_server  check-server: what a FHIR server supports (fhirpanel.checkserver)
    serve         serve: the API and dashboard (fhirpanel.api.serve)
    smart         smart-jwks: the public key to register for SMART Backend Services
"""
