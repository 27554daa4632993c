"""Op definitions, one module per family. Importing this package registers them all."""

from qcompiler.ops import quant  # noqa: F401
from qcompiler.ops import float_ops  # noqa: F401
from qcompiler.ops import shape  # noqa: F401
from qcompiler.ops import conv  # noqa: F401
from qcompiler.ops import tensor  # noqa: F401
from qcompiler.ops import elementwise  # noqa: F401
from qcompiler.ops import linear  # noqa: F401
from qcompiler.ops import activation  # noqa: F401
from qcompiler.ops import dynamic  # noqa: F401
from qcompiler.ops import fake_quant  # noqa: F401
from qcompiler.ops import conv_transpose  # noqa: F401
from qcompiler.ops import norm  # noqa: F401
from qcompiler.ops import embedding  # noqa: F401
from qcompiler.ops import pool  # noqa: F401
from qcompiler.ops import float_pool  # noqa: F401
from qcompiler.ops import layout  # noqa: F401
