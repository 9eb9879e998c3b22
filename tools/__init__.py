"""Tools of this repository, not part of any installed package: they know its layout (``recipes/<task>/``).

Run them from the repository root: ``python -m tools.sweep``, ``python -m tools.report``, ``python -m tools.demo``
(the Makefile's ``sweep-*``, ``report``/``reproduce-*`` and ``demo`` targets do). They import the installed
libraries (``dkl_train``, ``dkl_core``) and the recipes; nothing installed imports them.
"""
