"""The specimens: what notebooks hold, each built by its own cells and checked by a fingerprint.

A fingerprint is a Python expression evaluated in the kernel (silently: the agent records
nothing) whose repr must be the same before the checkpoint and after each restore. It reads the
value the way a user would rely on it (bytes, dtypes, a rendered figure, aliasing with `is`), and
never changes it. `HTTP_URL` and `SCRATCH_DIR` are environment variables the runner sets: a local
http.server on loopback for requests, and a directory of the specimen's own for files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HTTP_URL = "COVERAGE_TABLE_HTTP"
SCRATCH_DIR = "COVERAGE_TABLE_SCRATCH"

DISTRIBUTIONS = {
    "numpy": "numpy", "pandas": "pandas", "scipy": "scipy", "scikit-learn": "scikit-learn",
    "matplotlib": "matplotlib", "seaborn": "seaborn", "opencv": "opencv-python-headless",
    "requests": "requests", "polars": "polars", "pyarrow": "pyarrow", "xarray": "xarray",
    "Pillow": "pillow", "networkx": "networkx", "sympy": "sympy", "statsmodels": "statsmodels",
    "PyTorch": "torch", "Python": "",
}
"""Library as the table names it -> the distribution whose version is reported ("" = the interpreter)."""

HEAVY = frozenset({"PyTorch"})
"""Libraries whose install and import dominate a run: `--skip-heavy` takes their rows from the results file."""


@dataclass(frozen=True)
class Specimen:
    name: str
    library: str
    cells: tuple[str, ...]
    names: tuple[str, ...]
    """The variables the fingerprint reads (their restore report entries decide the verdict)."""
    fingerprint: str

    @property
    def key(self) -> str:
        """Unique and file-name safe: the session name and the results' key."""
        return re.sub(r"[^a-z0-9]+", "-", f"{self.library} {self.name}".lower()).strip("-")

    @property
    def heavy(self) -> bool:
        return self.library in HEAVY


def render_png(figure: str) -> str:
    """Fingerprint of a matplotlib figure: its pixels, rendered at a fixed dpi."""
    return (f"(lambda b: ({figure}.savefig(b, format='rgba', dpi=40), b.getvalue())[1])"
            "(__import__('io').BytesIO())")


def _s(name: str, library: str, cells: list[str] | str, names: str, fingerprint: str) -> Specimen:
    cells = [cells] if isinstance(cells, str) else cells
    return Specimen(name, library, tuple(cells), tuple(names.split()), fingerprint)


_PLOT = "import matplotlib.pyplot as plt\nimport numpy as np\n"
_TIPS = ("import pandas as pd\nimport seaborn as sns\nimport matplotlib.pyplot as plt\n"
         "tips = pd.DataFrame({'x': [1, 2, 3, 4, 5, 6], 'y': [2.0, 4.5, 3.1, 5.2, 7.0, 6.4], 'g': list('aabbcc')})")
_URL = f"import os\nimport requests\nurl = os.environ[{HTTP_URL!r}] + '/data.json'\n"
_GRAY = "import cv2\nimport numpy as np\nbase = (np.arange(64 * 64) % 251).astype(np.uint8).reshape(64, 64)\n"

SPECIMENS: tuple[Specimen, ...] = (
    # --- the seed product's 22 ---
    _s("ndarray", "numpy", "import numpy as np\na = np.arange(12, dtype=np.float64).reshape(3, 4) / 7",
       "a", "(a.dtype.str, a.shape, a.tobytes())"),
    _s("structured array", "numpy",
       "import numpy as np\nrec = np.array([(1, 2.5, b'x'), (2, -1.0, b'yz')], "
       "dtype=[('id', 'i4'), ('v', 'f8'), ('tag', 'S2')])",
       "rec", "(rec.dtype.descr, rec.tobytes())"),
    _s("masked array", "numpy",
       "import numpy as np\nm = np.ma.masked_array([1.0, 2.0, 3.0, 4.0], mask=[0, 1, 0, 1], fill_value=-9.0)",
       "m", "(m.data.tobytes(), m.mask.tobytes(), float(m.fill_value))"),
    _s("datetime64 array", "numpy",
       "import numpy as np\nt = np.arange('2024-01-01', '2024-01-08', dtype='datetime64[D]')",
       "t", "(t.dtype.str, t.tobytes())"),
    _s("DataFrame", "pandas",
       "import pandas as pd\ndf = pd.DataFrame({'a': [1, 2, 3], 'b': ['x', 'y', 'z'], 'c': [0.5, None, 2.5]})",
       "df", "(df.to_json(), [str(d) for d in df.dtypes])"),
    _s("Series", "pandas",
       "import pandas as pd\ns = pd.Series([1.5, 2.5, None], index=['a', 'b', 'c'], name='s')",
       "s", "(s.to_json(), str(s.dtype), s.name)"),
    _s("categorical Series", "pandas",
       "import pandas as pd\ncat = pd.Series(['lo', 'hi', 'lo', 'mid'], "
       "dtype=pd.CategoricalDtype(['lo', 'mid', 'hi'], ordered=True))",
       "cat", "(list(cat.cat.categories), cat.cat.ordered, cat.cat.codes.tolist())"),
    _s("DatetimeIndex frame", "pandas",
       "import pandas as pd\nts = pd.DataFrame({'v': range(5)}, "
       "index=pd.date_range('2024-01-01', periods=5, freq='h', tz='UTC'))",
       "ts", "(ts.index.asi8.tolist(), str(ts.index.tz), ts.index.freqstr, ts['v'].tolist())"),
    _s("csr_matrix", "scipy",
       "import scipy.sparse as sparse\n"
       "csr = sparse.csr_matrix(([1.0, 2.0, 3.0], ([0, 1, 2], [2, 0, 1])), shape=(3, 3))",
       "csr", "(csr.format, csr.shape, csr.indptr.tobytes(), csr.indices.tobytes(), csr.data.tobytes())"),
    _s("csc_matrix", "scipy",
       "import scipy.sparse as sparse\n"
       "csc = sparse.csc_matrix(([1.0, 2.0, 3.0], ([0, 1, 2], [2, 0, 1])), shape=(3, 3))",
       "csc", "(csc.format, csc.shape, csc.indptr.tobytes(), csc.indices.tobytes(), csc.data.tobytes())"),
    _s("frozen distribution", "scipy", "from scipy import stats\ndist = stats.norm(loc=1.5, scale=2.0)",
       "dist", "(dist.dist.name, dist.args, dist.kwds, float(dist.cdf(0.3)), float(dist.mean()))"),
    _s("fitted LinearRegression", "scikit-learn",
       "import numpy as np\nfrom sklearn.linear_model import LinearRegression\n"
       "X = np.arange(20.0).reshape(10, 2)\ny = X @ [1.5, -2.0] + 0.5\nlr = LinearRegression().fit(X, y)",
       "lr", "(lr.coef_.tobytes(), float(lr.intercept_), lr.predict([[1.0, 2.0]]).tobytes())"),
    _s("fitted StandardScaler", "scikit-learn",
       "import numpy as np\nfrom sklearn.preprocessing import StandardScaler\n"
       "scaler = StandardScaler().fit(np.array([[1.0, 10.0], [2.0, 20.0], [4.0, 30.0]]))",
       "scaler", "(scaler.mean_.tobytes(), scaler.scale_.tobytes(), int(scaler.n_samples_seen_))"),
    _s("fitted RandomForestClassifier", "scikit-learn",
       "from sklearn.datasets import make_classification\nfrom sklearn.ensemble import RandomForestClassifier\n"
       "X, y = make_classification(n_samples=200, n_features=6, random_state=0)\n"
       "forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)",
       "forest", "(forest.predict_proba(X[:20]).tobytes(), [e.tree_.node_count for e in forest.estimators_])"),
    _s("line Figure", "matplotlib",
       _PLOT + "fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([0, 1, 2, 3], [1, 4, 2, 3], label='line')\n"
       "ax.set_title('line')\nax.legend()",
       "fig ax", f"({render_png('fig')}, ax is fig.axes[0])"),
    _s("imshow Figure", "matplotlib",
       _PLOT + "fig2, ax2 = plt.subplots(figsize=(3, 3))\nim = ax2.imshow(np.arange(64.0).reshape(8, 8))\n"
       "fig2.colorbar(im)",
       "fig2", render_png("fig2")),
    _s("FacetGrid", "seaborn", [_TIPS, "grid = sns.FacetGrid(tips, col='g')\ngrid.map(plt.scatter, 'x', 'y')"],
       "grid", f"({render_png('grid.figure')}, list(grid.col_names))"),
    _s("scatterplot Axes", "seaborn", [_TIPS, "ax3 = sns.scatterplot(data=tips, x='x', y='y', hue='g')"],
       "ax3", f"({render_png('ax3.figure')}, len(ax3.collections))"),
    _s("grayscale image", "opencv", _GRAY + "gray = cv2.GaussianBlur(base, (5, 5), 0)",
       "gray", "(gray.shape, gray.dtype.str, gray.tobytes())"),
    _s("colour image", "opencv",
       "import cv2\nimport numpy as np\nbgr = np.zeros((32, 48, 3), np.uint8)\n"
       "cv2.rectangle(bgr, (4, 4), (30, 20), (255, 128, 0), -1)\ncv2.circle(bgr, (36, 16), 8, (0, 0, 255), -1)\n"
       "hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)",
       "bgr hsv", "(bgr.tobytes(), hsv.shape, hsv.tobytes())"),
    _s("Response", "requests", _URL + "response = requests.get(url, timeout=10)",
       "response", "(response.status_code, response.headers['Content-Type'], response.content, response.url)"),
    _s("Session", "requests",
       _URL + "session = requests.Session()\nsession.headers['X-Notebook'] = 'coverage'\n"
       "session.cookies.set('token', 'abc')\nstatus = session.get(url, timeout=10).status_code",
       "session", "(sorted(session.headers.items()), sorted(session.cookies.get_dict().items()), "
       "sorted(session.adapters))"),
    # --- what else notebooks hold ---
    _s("DataFrame", "polars", "import polars as pl\npdf = pl.DataFrame({'a': [1, 2, 3], 'b': ['x', None, 'z']})",
       "pdf", "(str(pdf.schema), pdf.rows())"),
    _s("LazyFrame", "polars",
       "import polars as pl\nlazy = pl.DataFrame({'a': [1, 2, 3]}).lazy().filter(pl.col('a') > 1)"
       ".with_columns((pl.col('a') * 2).alias('a2'))",
       "lazy", "(str(lazy.collect_schema()), lazy.collect().rows())"),
    _s("Table", "pyarrow", "import pyarrow as pa\ntable = pa.table({'n': [1, 2, None], 's': ['a', 'b', 'c']})",
       "table", "(str(table.schema), table.to_pydict())"),
    _s("dictionary array", "pyarrow",
       "import pyarrow as pa\ncodes = pa.array(['a', 'b', 'a', None]).dictionary_encode()",
       "codes", "(str(codes.type), codes.to_pylist(), codes.indices.to_pylist())"),
    _s("DataArray", "xarray",
       "import numpy as np\nimport xarray as xr\nda = xr.DataArray(np.arange(6.0).reshape(2, 3), dims=('x', 'y'), "
       "coords={'x': [10, 20], 'y': ['a', 'b', 'c']}, attrs={'units': 'm'}, name='depth')",
       "da", "da.to_dict()"),
    _s("Dataset", "xarray",
       "import pandas as pd\nimport xarray as xr\nds = xr.Dataset({'temp': (('time',), [1.0, 2.0, 3.0])}, "
       "coords={'time': pd.date_range('2024-01-01', periods=3)})",
       "ds", "ds.to_dict()"),
    _s("RGB image", "Pillow",
       "from PIL import Image, ImageDraw\nrgb = Image.new('RGB', (40, 30), 'white')\n"
       "ImageDraw.Draw(rgb).ellipse((5, 5, 30, 25), fill=(200, 30, 30))",
       "rgb", "(rgb.mode, rgb.size, rgb.tobytes())"),
    _s("palette image", "Pillow",
       "from PIL import Image, ImageDraw\nsrc = Image.new('RGB', (40, 30), 'white')\n"
       "ImageDraw.Draw(src).rectangle((5, 5, 30, 25), fill=(30, 200, 30))\n"
       "pal = src.convert('P', palette=Image.Palette.ADAPTIVE, colors=8)",
       "pal", "(pal.mode, pal.tobytes(), pal.getpalette())"),
    _s("Graph", "networkx", "import networkx as nx\nkarate = nx.karate_club_graph()",
       "karate", "(sorted(karate.nodes(data=True)), sorted(karate.edges(data=True)))"),
    _s("weighted DiGraph", "networkx",
       "import networkx as nx\nflow = nx.DiGraph(name='flow')\n"
       "flow.add_weighted_edges_from([('a', 'b', 1.0), ('b', 'd', 2.0), ('a', 'c', 0.5), ('c', 'd', 4.0)])",
       "flow", "(flow.graph, sorted(flow.edges(data=True)), nx.shortest_path(flow, 'a', 'd', weight='weight'))"),
    _s("expression", "sympy",
       "import sympy as sp\nx, y = sp.symbols('x y', positive=True)\n"
       "series = sp.series(sp.sin(x) * sp.exp(y), x, 0, 6).removeO()",
       "series", "sp.srepr(series)"),
    _s("Matrix", "sympy",
       "import sympy as sp\nx, y = sp.symbols('x y')\ninverse = sp.Matrix([[x, 1], [2, y]]).inv()",
       "inverse", "sp.srepr(inverse)"),
    _s("OLS results", "statsmodels",
       "import numpy as np\nimport statsmodels.api as sm\nxs = np.arange(20.0)\n"
       "ols = sm.OLS(3 + 2 * xs + np.sin(xs), sm.add_constant(xs)).fit()",
       "ols", "(ols.params.tobytes(), float(ols.rsquared), ols.bse.tobytes())"),
    _s("formula OLS results", "statsmodels",
       "import numpy as np\nimport pandas as pd\nimport statsmodels.formula.api as smf\n"
       "frame = pd.DataFrame({'x': np.arange(20.0), 'y': 3 + 2 * np.arange(20.0) + np.cos(np.arange(20.0))})\n"
       "fit = smf.ols('y ~ x', data=frame).fit()",
       "fit", "(fit.params.to_json(), fit.predict(pd.DataFrame({'x': [1.5]})).tolist())"),
    _s("tensor", "PyTorch", "import torch\ntorch.manual_seed(0)\ntensor = torch.randn(4, 5)",
       "tensor", "(str(tensor.dtype), tuple(tensor.shape), tensor.numpy().tobytes())"),
    _s("module", "PyTorch",
       "import torch\ntorch.manual_seed(0)\n"
       "net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))",
       "net", "[(k, v.numpy().tobytes()) for k, v in net.state_dict().items()]"),
    _s("optimizer after a step", "PyTorch",
       "import torch\ntorch.manual_seed(0)\nmodel = torch.nn.Linear(3, 1)\n"
       "opt = torch.optim.Adam(model.parameters(), lr=0.1)\n"
       "model(torch.ones(2, 3)).pow(2).sum().backward()\nopt.step()",
       "model opt", "(repr(opt.state_dict()), [p.detach().numpy().tobytes() for p in model.parameters()], "
       "opt.param_groups[0]['params'][0] is model.weight)"),
    # --- the hard cases ---
    _s("unseeded random array", "numpy", "import numpy as np\nnoise = np.random.rand(1000)",
       "noise", "noise.tobytes()"),
    _s("seeded global draws", "numpy", "import numpy as np\nnp.random.seed(0)\ndraws = np.random.rand(5)",
       "draws", "draws.tobytes()"),
    _s("seeded Generator and its draws", "numpy",
       "import numpy as np\nrng = np.random.default_rng(42)\nsample = rng.normal(size=5)",
       "rng sample", "(rng.bit_generator.state, sample.tobytes())"),
    _s("aliased numpy view", "numpy",
       "import numpy as np\nbase = np.arange(10)\nview = base[2:5]\nview[0] = 99",
       "base view", "(bool(np.shares_memory(base, view)), base.tobytes(), view.tobytes(), "
       "view.__array_interface__['data'][0] - base.__array_interface__['data'][0])"),
    _s("partially consumed generator", "Python",
       ["def count_up():\n    n = 0\n    while True:\n        yield n\n        n += 1\ncounter = count_up()",
        "first = [next(counter) for _ in range(3)]"],
       "counter", "(__import__('inspect').getgeneratorstate(counter), counter.gi_frame.f_locals)"),
    _s("lock", "Python", "import threading\nlock = threading.Lock()\nrlock = threading.RLock()",
       "lock rlock", "(type(lock).__name__, lock.locked(), type(rlock).__name__)"),
    _s("sqlite3 connection", "Python",
       "import sqlite3\ncon = sqlite3.connect(':memory:')\ncon.execute('create table t (k integer, v text)')\n"
       "con.executemany('insert into t values (?, ?)', [(1, 'a'), (2, 'b')])\ncon.commit()",
       "con", "con.execute('select * from t order by k').fetchall()"),
    _s("open file", "Python",
       [f"import os\npath = os.path.join(os.environ[{SCRATCH_DIR!r}], 'notes.txt')\n"
        "with open(path, 'w') as out:\n    out.write('line 1\\nline 2\\nline 3\\n')",
        "notes = open(path)\nheader = notes.readline()"],
       "notes", "(notes.name, notes.mode, notes.closed, notes.tell(), header)"),
    _s("lambda", "Python", "scale = 3\ntimes = lambda v: v * scale",
       "times", "(times(7), times.__name__)"),
    _s("closure", "Python",
       ["def make_counter(start):\n    count = start\n    def step():\n        nonlocal count\n        count += 1\n"
        "        return count\n    return step\ntick = make_counter(10)", "tick()"],
       "tick", "[c.cell_contents for c in tick.__closure__]"),
    _s("notebook class and instances", "Python",
       "class Point:\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n\n    def norm(self):\n"
       "        return (self.x ** 2 + self.y ** 2) ** 0.5\npoints = [Point(3, 4), Point(6, 8)]",
       "Point points", "([type(p) is Point for p in points], [p.norm() for p in points], Point.__qualname__)"),
    _s("objects aliased across names", "Python",
       "shared = [1, 2, 3]\nholder = {'items': shared}\nsame = shared\nshared.append(4)",
       "shared holder same", "(holder['items'] is shared, same is shared, shared)"),
    _s("dataclass", "Python",
       "from dataclasses import dataclass\n\n@dataclass(frozen=True)\nclass Config:\n    name: str\n"
       "    layers: tuple = (64, 32)\ncfg = Config('net')",
       "Config cfg", "(repr(cfg), type(cfg) is Config)"),
)
