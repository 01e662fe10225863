"""The mapping tables under `mappings/`, read, validated and typed once: `Tables.load(settings)`.

- `files`: reads the TOML files (the only module that does);
- `schemas`: one pydantic model per file shape; a file that does not fit is one MappingError
  naming the file, the key path and the reason;
- `writeback`: the write-back's typed tables (codes, CarePlan templates, narrative labels);
- `loader`: `Tables` (the method's tables and the write-back's) and the `parse_*` functions for
  one file's data.

The domain's typed rules check what a schema cannot (duplicates, cross-references, well-formed
codes); the domain itself imports nothing from here.
"""

from fhirpanel.tables.loader import MethodTables, Tables, WritebackTables

__all__ = ["MethodTables", "Tables", "WritebackTables"]
