"""Spin on the CPU until killed."""


def spin() -> None:
    count = 0
    while True:
        count += 1


print("spinning", flush=True)
spin()
