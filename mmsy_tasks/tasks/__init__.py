"""The lmms-eval task folder of MM-SY: ``--include_path "$(mmsy tasks-path)"``.

The folder is a package only so that its ``utils.py`` ships with MM-SY;
lmms-eval reads the YAMLs and imports ``utils.py`` by file path.
"""
