"""A helper module imported by with_sibling.py from its own directory."""


def digits_in(text: str) -> int:
    return sum(c.isdigit() for c in text)
