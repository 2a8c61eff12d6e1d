"""placeholder"""
EXCLUSIONS: dict[str, str] = {}
