"""``python -m tasks.diabetes``: the baseline table (``tasks.diabetes.baseline``)."""

from tasks.diabetes.baseline import main

main()
