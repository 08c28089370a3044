"""Outside text in the dashboard's Markdown (pages.shared.text.md): shown
as typed, never a link, an image or formatting."""

from hypothesis import given
from hypothesis import strategies as st

from pages.shared.text import MARKDOWN_PUNCTUATION, ZWSP, md


@given(st.text())
def test_every_punctuation_is_escaped_and_no_bare_link_survives(text):
    out = md(text)
    assert "\n" not in out and "\r" not in out
    assert "://" not in out.replace("\\", "") and "www." not in out.replace("\\", "").lower()
    i = 0
    while i < len(out):  # every punctuation character comes escaped
        if out[i] == "\\":
            assert out[i + 1] in MARKDOWN_PUNCTUATION
            i += 2
            continue
        assert out[i] not in MARKDOWN_PUNCTUATION
        i += 1


def test_the_text_reads_as_typed():
    out = md("[x](https://evil.example) a@b.c")
    shown = out.replace("\\", "").replace(ZWSP, "")
    assert shown == "[x](https://evil.example) a@b.c"
