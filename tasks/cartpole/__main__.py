"""``python -m tasks.cartpole``: the baseline over seeds (``tasks.cartpole.baseline``)."""

from tasks.cartpole.baseline import main

main()
