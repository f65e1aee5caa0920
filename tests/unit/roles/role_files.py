# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load a script a role ships in its files/ directory as a module, for the unit tests.

The scripts are plain files (installed without a .py name on the hosts), not
packages: each call executes the file anew and returns a fresh module object,
which is not registered in sys.modules."""

import importlib.machinery
import importlib.util
import os

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def role_file(role, name):
    """The path of roles/ROLE/files/NAME in this checkout."""
    return os.path.join(TOP, "roles", role, "files", name)


def load_role_file(role, name, module_name):
    """roles/ROLE/files/NAME executed as a module called MODULE_NAME."""
    loader = importlib.machinery.SourceFileLoader(module_name, role_file(role, name))
    spec = importlib.util.spec_from_loader(module_name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
