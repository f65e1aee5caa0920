# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The reviewed golden copies of rendered rules (tests/unit/plugins/module_utils/golden)."""
import os

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden")


def golden(name, text):
    """The golden copy `name`; with TOREXIT_REGEN_GOLDEN=1 it is first rewritten from
    `text` (after an intended change: review the diff)."""
    path = os.path.join(GOLDEN, name)
    if os.environ.get("TOREXIT_REGEN_GOLDEN"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        return f.read()
