#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    if sys.argv[1:2] == ["demo"]:
        os.environ.setdefault("DEBUG", "1")  # the demo is local by definition; DEBUG is off everywhere else
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
