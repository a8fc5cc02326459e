"""A family's transformers modeling code is imported when a checkpoint of that family needs it, not
by `import zswarm.models` (every server and client imports it; the six modules cost seconds)."""
import subprocess
import sys

from zswarm.models.families import SUPPORTED_MODEL_TYPES

PROBE = """
import sys
import zswarm.models
from zswarm.models.families import family_for
from transformers import AutoConfig

def modeling():  # the families' modeling modules loaded so far (transformers' auto classes are not one)
    return sorted(m.rsplit('.', 1)[1] for m in sys.modules
                  if m.startswith('transformers.models.') and '.modeling_' in m and '.auto.' not in m)

print(modeling())
family_for(AutoConfig.for_model('mistral')).block_class(AutoConfig.for_model('mistral'))
print(modeling())
"""


def test_import_loads_no_family_and_a_family_loads_only_its_own_modeling_module():
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    at_import, after_mistral = done.stdout.strip().splitlines()[-2:]
    assert at_import == "[]"
    assert after_mistral == "['modeling_mistral']"


def test_supported_types_are_listed_without_importing_them():
    assert SUPPORTED_MODEL_TYPES == ("bloom", "falcon", "llama", "mistral", "mixtral", "qwen2")
