"""The deployables: one folder per process kind the Procfile and deploy/catalog.py run.

A service imports the runtime, its own modules, the trainer and generated code, never
another service's modules or a tool (tests/test_layout.py).
"""
