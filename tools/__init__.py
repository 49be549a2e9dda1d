"""Tools that run on a developer's machine, never in a production pod: the `magiclens` CLI,
the demo, the demo-corpus builder, page ingestion and the local infrastructure launchers."""
