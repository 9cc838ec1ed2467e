from enum import Enum


class Platform(Enum):
    VC4 = "vc4"
    PISP = "pisp"


CURRENT = Platform.VC4


def get_platform() -> Platform:
    return CURRENT
