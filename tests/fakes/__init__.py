"""Local stand-ins for the services the worker calls, speaking their real protocols."""
