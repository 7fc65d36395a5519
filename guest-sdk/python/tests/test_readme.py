"""The README's example is modules/wordcount-py/wordcount.py, verbatim."""

import os
import re
import unittest

import support


class Readme(unittest.TestCase):
    def test_the_example_is_the_wordcount_module(self):
        with open(os.path.join(support.SDK, "README.md"), encoding="utf-8") as f:
            readme = f.read()
        with open(os.path.join(support.REPO, "modules", "wordcount-py", "wordcount.py"), encoding="utf-8") as f:
            source = f.read()
        example = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
        self.assertEqual(example, source)


if __name__ == "__main__":
    unittest.main()
