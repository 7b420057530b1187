"""The four wxlogin services. Each has the same skeleton: ``__main__``, ``app`` (composition root),
``handlers`` (bus/RPC handlers), ``store`` (MongoDB) and ``errors``. No service imports another."""
