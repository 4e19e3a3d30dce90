# Fails with MESSAGE: a test that stands for a missing prerequisite, so that CI cannot skip silently.
message(FATAL_ERROR "${MESSAGE}")
