"""The worker daemon: claims jobs, runs each through the runner, keeps their leases."""
