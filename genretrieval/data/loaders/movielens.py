"""Load the GroupLens MovieLens releases into the canonical catalog and interaction tables.

:func:`load_movielens` takes the release's directory and detects the format from the file names:

* **ML-100K**: ``u.data`` (tab-separated ``user item rating unix-time``) + ``u.item`` (``|``-separated: id,
  ``"Title (year)"``, release date, video release date, IMDb URL, 19 genre flags); genre names come from ``u.genre``
  (``name|index`` lines) when present, else the standard 19 names (:data:`ML100K_GENRES`).
* **ML-1M / ML-10M**: ``ratings.dat`` (``user::item::rating::time``) + ``movies.dat`` (``id::Title (year)::G1|G2``);
  ML-10M's optional ``tags.dat`` (``user::item::tag::time``) is used like ``tags.csv``.
* **ml-latest / ml-latest-small / ml-20m / ml-25m / ml-32m**: ``ratings.csv`` (``userId,movieId,rating,timestamp``)
  + ``movies.csv`` (``movieId,title,genres``, quoted titles) + optional ``tags.csv`` (``userId,movieId,tag,timestamp``).

Every file may also be gzipped (``u.data.gz`` etc.; detected from the content, not the name). Text files are decoded
as UTF-8 when valid, else as latin-1 (ML-100K and ML-1M are latin-1; the CSV releases are UTF-8).

Tables
    Catalog: ``item_id`` = the movie id; ``title`` = ``"Title (year)"`` as released; ``categories`` = the genres in
    file order (the no-genre markers ``unknown`` / ``(no genres listed)`` are dropped); ``text`` =
    ``"Title (year). Genres: G1, G2."`` plus ``" Tags: t1, t2."`` with the movie's ``max_tags`` most frequent tags
    when a tags file exists. Only movies with at least one kept rating are in the catalog, in movie-file order.
    Interactions: every kept rating is a ``rec`` event with an empty query; rows are sorted by (user id, numerically
    when all digits; timestamp; line in the ratings file), so equal timestamps keep the file order.

``min_rating`` keeps ratings ``>= min_rating``; the default keeps all, as in the SASRec / RecBole leave-one-out
setups (every rating is an implicit interaction).

Problems raise :class:`~genretrieval.data.schema.DataFormatError` naming the file, the 1-based line and the field
(``u.data line 7, field 'timestamp': 'x1' is not an integer``); a missing file raises ``FileNotFoundError`` listing the
file names each format expects.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from datasets import Dataset

from ..schema import CATALOG_FEATURES, DataFormatError, rec_tables

# Order of the genre flags in u.item (also the content of u.genre).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# Genre values that mean "no genre" rather than a genre.
NO_GENRE = ("unknown", "(no genres listed)")

# File names per format: (ratings, movies, optional tags).
_FORMATS = {
    "ml-100k": ("u.data", "u.item", None),
    "ml-dat": ("ratings.dat", "movies.dat", "tags.dat"),
    "ml-csv": ("ratings.csv", "movies.csv", "tags.csv"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def detect_movielens_format(path: str | os.PathLike) -> str:
    """``"ml-100k"``, ``"ml-dat"`` (ML-1M/10M) or ``"ml-csv"`` (ml-latest family) from the files in ``path``."""
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory; expected a MovieLens release folder ({_expected()})")
    for name, (ratings, _, _) in _FORMATS.items():
        if _existing(directory, ratings) is not None:
            return name
    raise FileNotFoundError(f"{directory}: no MovieLens ratings file found; expected {_expected()}")


def load_movielens(
    path: str | os.PathLike, *, min_rating: float | None = None, max_tags: int = 10
) -> tuple[Dataset, Dataset]:
    """Read a MovieLens release folder into ``(catalog, interactions)`` (see the module docstring).

    ``min_rating``: keep ratings ``>= min_rating`` (``None`` keeps all). ``max_tags``: most frequent tags per movie
    appended to its text when the release has a tags file (0 = none).
    """
    if min_rating is not None and (
        isinstance(min_rating, bool) or not isinstance(min_rating, (int, float)) or not math.isfinite(min_rating)
    ):
        raise ValueError(f"load_movielens: min_rating must be a finite number or None, got {min_rating!r}")
    if isinstance(max_tags, bool) or not isinstance(max_tags, int) or max_tags < 0:
        raise ValueError(f"load_movielens: max_tags must be an int >= 0, got {max_tags!r}")
    directory = Path(path)
    kind = detect_movielens_format(directory)
    ratings_name, movies_name, tags_name = _FORMATS[kind]
    ratings_path = _require(directory, ratings_name, kind)
    movies_path = _require(directory, movies_name, kind)
    if kind == "ml-100k":
        genre_path = _existing(directory, "u.genre")
        names = _read_u_genre(genre_path) if genre_path is not None else ML100K_GENRES
        movies = _read_u_item(movies_path, names)
    elif kind == "ml-dat":
        movies = _read_movies_dat(movies_path)
    else:
        movies = _read_movies_csv(movies_path)

    rows = _read_ratings(ratings_path, kind, movies, min_rating)
    tags: dict[str, Counter] = {}
    tags_path = _existing(directory, tags_name) if tags_name is not None and max_tags > 0 else None
    if tags_path is not None:
        tags = _read_tags(tags_path, kind, movies)

    rows.sort(key=lambda r: (id_sort_key(r[0]), r[2], r[3]))
    used = {item for _, item, _, _ in rows}
    catalog: dict[str, list[Any]] = {name: [] for name in CATALOG_FEATURES}
    for item, (title, genres) in movies.items():
        if item not in used:
            continue
        text = f"{title}. Genres: {', '.join(genres)}." if genres else f"{title}."
        top_tags = _top_tags(tags.get(item), max_tags)
        if top_tags:
            text += f" Tags: {', '.join(top_tags)}."
        catalog["item_id"].append(item)
        catalog["title"].append(title)
        catalog["text"].append(text)
        catalog["categories"].append(list(genres))
    if not rows:
        raise DataFormatError(str(ratings_path), None, "rating", f"no rating is kept (min_rating={min_rating!r})")
    return rec_tables(catalog, rows)


# --------------------------------------------------------------------------- file helpers (amazon.py uses them too)


def id_sort_key(value: str) -> tuple[int, int, str]:
    """Sort key for ids: all-digit ids numerically (so ``"2" < "10"``), then the others as strings."""
    return (0, int(value), "") if value.isdigit() else (1, 0, value)


def find_file(directory: Path, name: str) -> Path | None:
    """``directory/name`` or ``directory/name.gz``, whichever exists (plain first), else ``None``."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def open_text(path: str | os.PathLike, encoding: str = "utf-8", newline: str | None = None) -> IO[str]:
    """Open a text file, gunzipping it when its first bytes are the gzip magic number (whatever its name)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    if gzipped:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline=newline)
    return open(path, encoding=encoding, newline=newline)


def read_text_guess_encoding(path: str | os.PathLike) -> str:
    """The whole (possibly gzipped) file as text: UTF-8 when valid, else latin-1 (which decodes any byte)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataFormatError(str(path), None, None, f"corrupt gzip file: {e}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def iter_lines(path: str | os.PathLike, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line, line without its end-of-line)`` for every non-blank line of a (gzipped) file."""
    try:
        with open_text(path, encoding=encoding) as f:
            for line, raw in enumerate(f, start=1):
                text = raw.rstrip("\r\n")
                if text.strip():
                    yield line, text
    except UnicodeDecodeError as e:
        raise DataFormatError(str(path), None, None, f"not valid {encoding} text: {e}") from None
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(str(path), None, None, f"cannot read the file: {e}") from None


def parse_int(value: str, path: str | os.PathLike, line: int, field: str) -> int:
    """An int from a string of digits (an integral float such as ``"12.0"`` is accepted too)."""
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if math.isfinite(number) and number.is_integer():
        return int(number)
    raise DataFormatError(str(path), line, field, f"{value!r} is not an integer")


def parse_id_text(value: str, path: str | os.PathLike, line: int, field: str) -> str:
    """A non-empty, stripped id."""
    text = value.strip()
    if not text:
        raise DataFormatError(str(path), line, field, "empty id")
    return text


# --------------------------------------------------------------------------- MovieLens files


def _existing(directory: Path, name: str) -> Path | None:
    return find_file(directory, name)


def _expected() -> str:
    return "; ".join(
        f"{kind}: {ratings} + {movies}" + (f" (+ optional {tags})" if tags else "")
        for kind, (ratings, movies, tags) in _FORMATS.items()
    )


def _require(directory: Path, name: str, kind: str) -> Path:
    found = _existing(directory, name)
    if found is None:
        ratings, movies, _ = _FORMATS[kind]
        raise FileNotFoundError(
            f"{directory}: missing {name} (or {name}.gz); the {kind} format needs {ratings} and {movies}"
        )
    return found


def _lines_guessing_encoding(path: Path) -> Iterator[tuple[int, str]]:
    for line, raw in enumerate(read_text_guess_encoding(path).splitlines(), start=1):
        if raw.strip():
            yield line, raw


def _read_u_genre(path: Path) -> tuple[str, ...]:
    """Genre names by flag index from ``u.genre`` (``name|index``)."""
    by_index: dict[int, str] = {}
    for line, raw in _lines_guessing_encoding(path):
        parts = raw.split("|")
        if len(parts) != 2:
            problem = f"expected 2 '|'-separated fields (name|index), got {len(parts)}"
            raise DataFormatError(str(path), line, None, problem)
        index = parse_int(parts[1], path, line, "index")
        if index in by_index:
            raise DataFormatError(str(path), line, "index", f"duplicate genre index {index}")
        by_index[index] = parts[0].strip()
    if sorted(by_index) != list(range(len(by_index))):
        raise DataFormatError(str(path), None, "index", f"genre indices must be 0..n-1, got {sorted(by_index)}")
    return tuple(by_index[i] for i in range(len(by_index)))


def _keep_genre(genre: str) -> bool:
    return bool(genre) and genre.lower() not in NO_GENRE


def _add_movie(movies: dict, item: str, title: str, genres: list[str], path: Path, line: int) -> None:
    if item in movies:
        raise DataFormatError(str(path), line, "item_id", f"duplicate movie id {item!r}")
    if not title:
        raise DataFormatError(str(path), line, "title", "empty title")
    movies[item] = (title, tuple(g for g in genres if _keep_genre(g)))


def _read_u_item(path: Path, genre_names: tuple[str, ...]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{item: (title, genres)}`` from ``u.item``; the flags map to ``genre_names`` by position."""
    n_fields = 5 + len(genre_names)
    movies: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line, raw in _lines_guessing_encoding(path):
        parts = raw.split("|")
        if len(parts) != n_fields:
            raise DataFormatError(
                str(path), line, None,
                f"expected {n_fields} '|'-separated fields (id, title, release date, video release date, URL, "
                f"{len(genre_names)} genre flags), got {len(parts)}",
            )  # fmt: skip
        genres = []
        for name, flag in zip(genre_names, parts[5:]):
            if flag.strip() not in ("0", "1"):
                raise DataFormatError(str(path), line, f"genre {name}", f"genre flag must be 0 or 1, got {flag!r}")
            if flag.strip() == "1":
                genres.append(name)
        _add_movie(movies, parse_id_text(parts[0], path, line, "item_id"), parts[1].strip(), genres, path, line)
    return movies


def _read_movies_dat(path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{item: (title, genres)}`` from ML-1M/10M ``movies.dat`` (``id::title::G1|G2``)."""
    movies: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line, raw in _lines_guessing_encoding(path):
        parts = raw.split("::")
        if len(parts) != 3:
            problem = f"expected 3 '::'-separated fields (id::title::genres), got {len(parts)}"
            raise DataFormatError(str(path), line, None, problem)
        genres = [g.strip() for g in parts[2].split("|")]
        _add_movie(movies, parse_id_text(parts[0], path, line, "item_id"), parts[1].strip(), genres, path, line)
    return movies


def _csv_rows(path: Path, header: tuple[str, ...], text: str | None = None) -> Iterator[tuple[int, list[str]]]:
    """Rows of a MovieLens CSV after checking that its header starts with ``header``; yields (start line, cells)."""
    handle = io.StringIO(text, newline="") if text is not None else open_text(path, newline="")
    with handle as f:
        reader = csv.reader(f)
        first = [cell.strip().lstrip("\ufeff") for cell in next(reader, [])]
        if first[: len(header)] != list(header):
            problem = f"expected the header {','.join(header)}, got {','.join(first)!r}"
            raise DataFormatError(str(path), 1, None, problem)
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num  # a quoted title may span lines: report where the row starts
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(first):
                raise DataFormatError(str(path), line, None, f"expected {len(first)} cells (header), got {len(row)}")
            yield line, row


def _read_movies_csv(path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """``{item: (title, genres)}`` from ml-latest ``movies.csv``."""
    movies: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line, row in _csv_rows(path, ("movieId", "title", "genres"), read_text_guess_encoding(path)):
        genres = [g.strip() for g in row[2].split("|")]
        _add_movie(movies, parse_id_text(row[0], path, line, "movieId"), row[1].strip(), genres, path, line)
    return movies


def _split_rating_line(raw: str, kind: str, path: Path, line: int) -> list[str]:
    if kind == "ml-100k":
        parts = raw.split("\t")
        if len(parts) != 4:
            parts = raw.split()  # some copies use spaces instead of tabs
        description = "tab-separated fields (user, item, rating, timestamp)"
    else:
        parts = raw.split("::")
        description = "'::'-separated fields (user::item::rating::timestamp)"
    if len(parts) != 4:
        raise DataFormatError(str(path), line, None, f"expected 4 {description}, got {len(parts)}")
    return parts


def _read_ratings(
    path: Path, kind: str, movies: dict, min_rating: float | None
) -> list[tuple[str, str, int, int]]:
    """Kept ratings as ``(user, item, timestamp, line)`` in file order."""
    if kind == "ml-csv":
        cells: Iterator[tuple[int, list[str]]] = _csv_rows(path, ("userId", "movieId", "rating", "timestamp"))
    else:
        cells = ((line, _split_rating_line(raw, kind, path, line)) for line, raw in iter_lines(path))
    user_field, item_field = ("userId", "movieId") if kind == "ml-csv" else ("user_id", "item_id")
    rows = []
    for line, parts in cells:
        user, item, rating, timestamp = parts[:4]  # ml-latest CSVs may grow extra columns
        user = parse_id_text(user, path, line, user_field)
        item = parse_id_text(item, path, line, item_field)
        if item not in movies:
            raise DataFormatError(str(path), line, item_field, f"unknown item {item!r} (not in the movies file)")
        try:
            value = float(rating)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataFormatError(str(path), line, "rating", f"{rating!r} is not a number")
        ts = parse_int(timestamp, path, line, "timestamp")
        if min_rating is None or value >= min_rating:
            rows.append((user, item, ts, line))
    return rows


def _read_tags(path: Path, kind: str, movies: dict) -> dict[str, Counter]:
    """Per movie, a Counter of lower-cased tags (first spelling kept for display) from tags.csv / tags.dat."""
    counts: dict[str, Counter] = {}
    cells: Iterator[tuple[int, list[str]]]
    if kind == "ml-csv":
        cells = _csv_rows(path, ("userId", "movieId", "tag"), read_text_guess_encoding(path))
    else:
        cells = _dat_tag_rows(path)
    item_field = "movieId" if kind == "ml-csv" else "item_id"
    for line, row in cells:
        item = parse_id_text(row[1], path, line, item_field)
        if item not in movies:
            raise DataFormatError(str(path), line, item_field, f"unknown item {item!r} (not in the movies file)")
        tag = " ".join(row[2].split())
        if tag:
            counts.setdefault(item, Counter())[tag.lower()] += 1
    return counts


def _dat_tag_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    for line, raw in _lines_guessing_encoding(path):
        parts = raw.split("::")
        if len(parts) < 4:
            problem = f"expected 4 '::'-separated fields (user::item::tag::timestamp), got {len(parts)}"
            raise DataFormatError(str(path), line, None, problem)
        # a tag may itself contain '::': everything between the item and the timestamp is the tag
        yield line, [parts[0], parts[1], "::".join(parts[2:-1]), parts[-1]]


def _top_tags(counts: Counter | None, k: int) -> list[str]:
    """The ``k`` most frequent tags, ties broken by first appearance (Counter keeps insertion order)."""
    if not counts or k == 0:
        return []
    return [tag for tag, _ in sorted(counts.items(), key=lambda kv: -kv[1])[:k]]
