# expect: policy_denied
# what: unpickling
"""A pickle whose loading runs os.system."""
import pickle

PAYLOAD = b"cposix\nsystem\n(S'touch __ESCAPE__'\ntR."


def forward(task):
    return str(pickle.loads(PAYLOAD))
