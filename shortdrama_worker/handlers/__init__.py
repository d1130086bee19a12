"""Built-in handlers; registered through entry points like third-party ones."""
