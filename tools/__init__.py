"""Tools for people, not workloads: the `magiclens` CLI, the demo, the demo-corpus builder,
page ingestion and the local infrastructure launchers. No deployed workload runs one (the
service image carries them only so an operator can run the CLI in a pod)."""
