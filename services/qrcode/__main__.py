"""``python -m services.qrcode``: the qrcode service alone (``python -m services run qrcode``)."""

from services.__main__ import main

if __name__ == "__main__":
    main(["run", "qrcode"])
