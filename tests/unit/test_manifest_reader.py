"""The one manifest reader: good files read as before, bad ones named by file, line, ID and column.

Each case writes a small CSV (bytes, so encodings and line endings are exact)
and reads it with ``read_manifest``. Good cases state the rows returned; bad
cases state the ``ManifestError`` message (which always names the file) and
the lines and columns of the problems it carries.
"""


import pytest

from sb_meta.data.manifest import (
    MAX_LISTED_PROBLEMS,
    ManifestError,
    ManifestProblem,
    read_manifest,
    summarize_manifest,
    write_manifest,
)

HEADER = b"ID,duration,wav,spk_id,wrd\n"


def csv_bytes(*rows, header=HEADER):
    return header + b"".join(r.encode() + b"\n" for r in rows)


def row(i, wav=None, wrd="HELLO", duration="1.0", spk="s1"):
    return f"u{i},{duration},{wav if wav is not None else f'u{i}.wav'},{spk},{wrd}"


# ------------------------------------------------------------------ good files

# (name, content, keyword options, expected IDs, extra check on the rows)
GOOD = [
    ("plain", csv_bytes(row(1), row(2)), {}, ["u1", "u2"], None),
    ("header only", HEADER, {}, [], None),
    ("byte-order mark", b"\xef\xbb\xbf" + csv_bytes(row(1)), {}, ["u1"], lambda rows: "ID" in rows[0]),
    ("CRLF line endings", csv_bytes(row(1), row(2)).replace(b"\n", b"\r\n"), {}, ["u1", "u2"],
     lambda rows: rows[1]["wrd"] == "HELLO"),
    ("blank lines", HEADER + b"\n" + row(1).encode() + b"\n\n   \n" + row(2).encode() + b"\n\n", {}, ["u1", "u2"],
     None),
    ("no final newline", csv_bytes(row(1)).rstrip(b"\n"), {}, ["u1"], None),
    ("quoted comma and newline", csv_bytes('u1,1.0,a.wav,s1,"HELLO, WORLD\nAGAIN"', row(2)), {}, ["u1", "u2"],
     lambda rows: rows[0]["wrd"] == "HELLO, WORLD\nAGAIN"),
    ("extra columns", csv_bytes("u1,1.0,a.wav,s1,HI,en", header=b"ID,duration,wav,spk_id,wrd,lang\n"), {}, ["u1"],
     lambda rows: rows[0]["lang"] == "en"),
    ("empty transcript is allowed by default", csv_bytes(row(1, wrd="")), {}, ["u1"],
     lambda rows: rows[0]["wrd"] == ""),
    ("values kept as written", csv_bytes("u1, 1.50 , a.wav ,s1,HI"), {}, ["u1"],
     lambda rows: rows[0]["duration"] == " 1.50 " and rows[0]["wav"] == " a.wav "),
    ("non-ASCII text", csv_bytes(row(1, wrd="ÇA VA")), {}, ["u1"], lambda rows: rows[0]["wrd"] == "ÇA VA"),
    ("blanks allowed with nonempty=()", csv_bytes(row(1, wav="")), {"nonempty": ()}, ["u1"], None),
    ("duplicates allowed with unique_ids=False", csv_bytes(row(1), row(1)), {"unique_ids": False}, ["u1", "u1"],
     None),
    ("other columns required", b"ID,wrd\nu1,HI\n", {"required": ("ID", "wrd"), "nonempty": ("ID", "wrd")}, ["u1"],
     None),
    ("numbers", csv_bytes(row(1, duration="1.5"), row(2, duration="2"), row(3, duration="1e-1")),
     {"numeric": ("duration",)}, ["u1", "u2", "u3"], None),
]


@pytest.mark.parametrize("name,content,options,ids,check", GOOD, ids=[c[0] for c in GOOD])
def test_good_manifests_read(tmp_path, name, content, options, ids, check):
    path = tmp_path / "m.csv"
    path.write_bytes(content)
    rows = read_manifest(path, **options)
    assert [r["ID"] for r in rows] == ids
    assert all(isinstance(v, str) for r in rows for v in r.values())
    if check is not None:
        assert check(rows)


def test_plain_call_reads_what_write_manifest_wrote(tmp_path):
    rows = [dict(ID=f"u{i}", duration=1.25 * i, wav=f"/d/u{i}.wav", spk_id="s", wrd="A B", lang="en")
            for i in range(1, 4)]
    path = write_manifest(tmp_path / "x.csv", rows, extra_columns=["lang"])
    back = read_manifest(path)
    assert back == [dict(r, duration=f"{r['duration']:.3f}") for r in rows]
    assert list(back[0]) == ["ID", "duration", "wav", "spk_id", "wrd", "lang"]


# ------------------------------------------------------------------- bad files

# (name, content, keyword options, message parts, [(line, column)] of the problems)
BAD = [
    # the file as a whole
    ("empty file", b"", {}, ["empty file, no header line", "ID,duration,wav,spk_id,wrd"], [(None, None)]),
    ("blank lines only", b"\n  \n\n", {}, ["empty file, no header line"], [(None, None)]),
    ("not UTF-8", csv_bytes(row(1)) + b"u2,1.0,b.wav,s1,CAF\xe9\n", {}, ["line 3: not UTF-8 text (byte 0xe9)"],
     [(3, None)]),
    ("UTF-16", csv_bytes(row(1)).decode().encode("utf-16"), {}, ["line 1: not UTF-8", "UTF-16"], [(1, None)]),
    ("binary", b"RIFF\x24\x08\x00\x00WAVEfmt \x10\x00\x00\x00", {}, ["line 1", "NUL byte", "CSV text"], [(1, None)]),
    ("NUL in a later line", csv_bytes(row(1), "u2,1.0,b\x00.wav,s1,HI"), {}, ["line 3: holds a NUL byte"], [(3, None)]),
    ("field over the csv size limit", csv_bytes(row(1), 'u2,1.0,b.wav,s1,"' + "A" * 200_000 + '"'), {},
     ["line 3: not readable as CSV (field larger than field limit"], [(3, None)]),
    # the header
    ("missing column", b"ID,wav,wrd\nu1,a.wav,HI\n", {},
     ["line 1: missing column 'duration'; the header is ID,wav,wrd"], [(1, "duration")]),
    ("missing columns", HEADER + row(1).encode() + b"\n", {"required": ("ID", "lang", "accent")},
     ["missing columns 'lang', 'accent'; the header is ID,duration,wav,spk_id,wrd"], [(1, "lang")]),
    ("tab-separated", b"ID\tduration\twav\nu1\t1.0\ta.wav\n", {}, ["missing columns", "is the file comma-separated?"],
     [(1, "ID")]),
    ("spaces around names", b"ID, duration, wav\nu1,1.0,a.wav\n", {}, ["missing columns 'duration', 'wav'",
                                                                        "remove the spaces"], [(1, "duration")]),
    ("nonempty column absent", csv_bytes(row(1)), {"nonempty": ("lang",)}, ["missing column 'lang'"], [(1, "lang")]),
    ("ID absent with unique_ids", b"wav\na.wav\n", {"required": ("wav",)}, ["missing column 'ID'"], [(1, "ID")]),
    ("column twice", b"ID,duration,wav,wav\nu1,1,a.wav,b.wav\n", {},
     ["line 1: column 'wav' appears twice in the header (columns 3 and 4)"], [(1, "wav")]),
    ("unnamed column", b"ID,duration,wav,\nu1,1,a.wav,\n", {}, ["line 1: header column 4 has no name"], [(1, None)]),
    # rows
    ("too many fields", csv_bytes(row(1), "u2,1.0,b.wav,s1,HELLO,WORLD"), {},
     ["line 3 (ID u2): 6 fields but the header has 5 columns (a comma in an unquoted value?)"], [(3, None)]),
    ("too few fields", csv_bytes("u1,1.0,a.wav,s1", row(2)), {},
     ["line 2 (ID u1): 4 fields but the header has 5 columns (a missing comma?)"], [(2, None)]),
    ("one field", csv_bytes(row(1), "garbage"), {}, ["line 3 (ID garbage): 1 field but the header has 5"],
     [(3, None)]),
    ("empty wav", csv_bytes(*(row(i) for i in range(1, 6)), "spk024_0003,1.0,,spk024,YES"), {},
     ["line 7 (ID spk024_0003): empty 'wav'"], [(7, "wav")]),
    ("blank wav", csv_bytes(row(1, wav="   ")), {}, ["line 2 (ID u1): empty 'wav'"], [(2, "wav")]),
    ("empty ID", csv_bytes(row(1), ",1.0,b.wav,s1,HI"), {}, ["line 3: empty 'ID'"], [(3, "ID")]),
    ("empty ID with nonempty=()", csv_bytes(",1.0,b.wav,s1,HI"), {"nonempty": ()}, ["line 2: empty 'ID'"],
     [(2, "ID")]),
    ("empty transcript asked for", csv_bytes(row(1), row(2, wrd="")), {"nonempty": ("ID", "wav", "wrd")},
     ["line 3 (ID u2): empty 'wrd'"], [(3, "wrd")]),
    ("duplicate ID", csv_bytes(row(1), row(2), row(1, wav="other.wav")), {},
     ["line 4 (ID u1): duplicate ID, first at line 2"], [(4, "ID")]),
    ("ID three times", csv_bytes(row(1), row(1), row(2), row(1)), {},
     ["2 problems", "line 3 (ID u1): duplicate ID, first at line 2", "line 5 (ID u1): duplicate ID, first at line 2"],
     [(3, "ID"), (5, "ID")]),
    ("not a number", csv_bytes(row(1), row(2, duration="abc"), row(3, duration="nan")), {"numeric": ("duration",)},
     ["line 3 (ID u2): 'duration' is 'abc', not a number", "line 4 (ID u3): 'duration' is 'nan', not a number"],
     [(3, "duration"), (4, "duration")]),
    ("empty number", csv_bytes(row(1, duration=" ")), {"numeric": ("duration",)}, ["line 2 (ID u1): empty 'duration'"],
     [(2, "duration")]),
    ("numeric column absent", b"ID,wav\nu1,a.wav\n", {"required": ("ID",), "numeric": ("duration",)},
     ["missing column 'duration'"], [(1, "duration")]),
    ("old Mac line endings", csv_bytes(row(1), row(2, wav="")).replace(b"\n", b"\r"), {},
     ["line 3 (ID u2): empty 'wav'"], [(3, "wav")]),
    ("line numbers after a multi-line value", csv_bytes('u1,1.0,a.wav,s1,"TWO\nLINES"', row(2, wav="")), {},
     ["line 4 (ID u2): empty 'wav'"], [(4, "wav")]),
    ("line numbers after blank lines", HEADER + b"\n\n" + row(1, wav="").encode() + b"\n", {},
     ["line 4 (ID u1): empty 'wav'"], [(4, "wav")]),
    ("several kinds at once", csv_bytes(row(1), row(2, wav=""), "u3,1.0", row(1)), {},
     ["3 problems", "line 3 (ID u2): empty 'wav'", "line 4 (ID u3): 2 fields", "line 5 (ID u1): duplicate ID"],
     [(3, "wav"), (4, None), (5, "ID")]),
]


@pytest.mark.parametrize("name,content,options,parts,where", BAD, ids=[c[0] for c in BAD])
def test_bad_manifests_are_named(tmp_path, name, content, options, parts, where):
    path = tmp_path / "data" / "test.csv"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ManifestError) as info:
        read_manifest(path, **options)
    err = info.value
    message = str(err)
    assert isinstance(err, ValueError) and err.path == str(path)
    assert message.startswith(f"manifest {path}")
    for part in parts:
        assert part in message, f"{part!r} not in:\n{message}"
    assert [(p.line, p.column) for p in err.problems] == where


def test_one_problem_is_one_line_in_the_briefs_format(tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes(csv_bytes(*(row(i) for i in range(1, 6)), "spk024_0003,1.0,,spk024,YES"))
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert str(info.value) == f"manifest {path}, line 7 (ID spk024_0003): empty 'wav'"
    assert info.value.problems == [ManifestProblem(7, "wav", "spk024_0003", "empty 'wav'")]


def test_many_problems_are_listed_up_to_a_limit_and_counted(tmp_path):
    n = MAX_LISTED_PROBLEMS + 5
    path = tmp_path / "test.csv"
    path.write_bytes(csv_bytes(*(row(i, wav="") for i in range(n))))
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    lines = str(info.value).splitlines()
    assert lines[0] == f"manifest {path}: {n} problems"
    assert lines[1] == "  line 2 (ID u0): empty 'wav'"
    assert len(lines) == 1 + MAX_LISTED_PROBLEMS + 1 and lines[-1] == "  ... and 5 more"
    assert [p.line for p in info.value.problems] == list(range(2, n + 2))  # all kept, in file order


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["absent", "a folder"])
def test_missing_file_or_folder(tmp_path, make):
    path = tmp_path / "m.csv"
    make(path)
    with pytest.raises(FileNotFoundError, match=str(path)):
        read_manifest(path)


def test_summary_names_a_bad_duration(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(csv_bytes(row(1), row(2, duration="1,5")))  # a decimal comma shifts the fields
    with pytest.raises(ManifestError, match="line 3 \\(ID u2\\): 6 fields"):
        summarize_manifest(path)
    path.write_bytes(csv_bytes(row(1), row(2, duration="1.5s")))
    with pytest.raises(ManifestError, match="line 3 \\(ID u2\\): 'duration' is '1.5s', not a number"):
        summarize_manifest(path)
