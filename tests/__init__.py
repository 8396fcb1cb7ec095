"""lanchat tests: real sockets, real databases, real processes."""
