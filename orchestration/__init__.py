"""What run.py does, one module per concern: the command line (cli), what to run (planning), the
child processes (supervisor) and one invocation from start to table (session)."""
