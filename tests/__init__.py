"""The test suite, a package: one folder per area, shared helpers in tests/support/."""
