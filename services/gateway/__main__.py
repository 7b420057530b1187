"""``python -m services.gateway``: the gateway service alone (``python -m services run gateway``)."""

from services.__main__ import main

if __name__ == "__main__":
    main(["run", "gateway"])
