"""Helpers every test area shares: processes, waiting, free ports, S3, the stand-in backbone."""
