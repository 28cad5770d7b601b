"""The one exception xreg raises for bad input."""


class XregError(ValueError):
    """Bad input to xreg; the message says what was wrong and how to fix it.

    Subclasses :class:`ValueError`, so ``except ValueError`` still catches it.
    """
