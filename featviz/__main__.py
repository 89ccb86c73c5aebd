"""``python -m featviz``: the same as the ``featviz`` command."""
from .cli import main

if __name__ == "__main__":
    main()
