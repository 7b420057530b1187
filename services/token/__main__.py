"""``python -m services.token``: the token service alone (``python -m services run token``)."""

from services.__main__ import main

if __name__ == "__main__":
    main(["run", "token"])
