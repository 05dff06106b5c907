"""Result URLs that open without the API key (ris.api.signed_urls)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ris.api.signed_urls import KEY_FILE, UrlSigner, data_folder_key

PATH = "/api/image/result/" + "a" * 32


def query(url: str) -> str:
    return url.partition("?")[2]


def test_a_signed_url_opens_its_image_alone_until_it_expires() -> None:
    now = [1_700_000_000.0]
    secret = bytes(range(32))
    signer = UrlSigner.for_keys(["k1", "k2"], lambda: secret, wall=lambda: now[0])
    assert signer is not None and UrlSigner.for_keys([], lambda: secret) is None  # no keys: unsigned
    url = signer.sign(PATH)
    # An hour, up to the next ten minutes: polled again meanwhile, the same URL (cached).
    assert url.startswith(PATH + "?expires=1700004000&signature=")
    now[0] += 300
    assert signer.sign(PATH) == url
    assert signer.opens(PATH, query(url))
    assert not signer.opens("/api/image/result/" + "b" * 32, query(url))  # another image
    assert not signer.opens("/api/stats", query(url))  # another route
    assert not signer.opens(PATH, query(url).replace("expires=17", "expires=18"))  # a longer life
    assert not signer.opens(PATH, "") and not signer.opens(PATH, "expires=1&signature=")
    assert not signer.opens(PATH, "expires=" + "9" * 5000 + "&signature=x")  # no huge int parsed
    # Not ASCII: "²" is a digit to isdigit, not to int(); compare_digest refuses such a str (500s).
    assert not signer.opens(PATH, "expires=%C2%B2&signature=" + query(url).rpartition("=")[2])
    assert not signer.opens(PATH, query(url)[:-1] + "%C3%A9")
    # Made with other keys (the keys changed since), or another data folder's key: refused.
    other = UrlSigner.for_keys(["k1"], lambda: secret, wall=lambda: now[0])
    assert other is not None and not other.opens(PATH, query(url))
    elsewhere = UrlSigner.for_keys(["k1", "k2"], lambda: bytes(32), wall=lambda: now[0])
    assert elsewhere is not None and not elsewhere.opens(PATH, query(url))
    # The same keys in another order, or after a restart: the same secret.
    again = UrlSigner.for_keys(["k2", "k1"], lambda: secret, wall=lambda: now[0])
    assert again is not None and again.opens(PATH, query(url))
    now[0] = 1_700_004_001
    assert not signer.opens(PATH, query(url))
    # Why, where it does not open: the refusal names it (url_expired, url_invalid).
    assert signer.verdict(PATH, query(url)) == "expired"
    assert signer.verdict(PATH, query(url).replace("signature=", "signature=0")[:-1]) == "invalid"
    assert signer.verdict(PATH, "format=mp3") is None and signer.verdict("/api/stats", query(url)) is None


def test_a_url_with_a_query_keeps_it_and_is_signed_for_its_path() -> None:
    """The seed API's audio_url carries ?format=mp3; the other format of the same audio is the
    same audio, and only the file routes open."""
    signer = UrlSigner.for_keys(["k1"], lambda: bytes(range(32)), wall=lambda: 1_700_000_000.0)
    assert signer is not None
    audio = "/api/tts/audio/" + "a" * 32
    url = signer.sign(audio + "?format=mp3")
    assert url.startswith(audio + "?format=mp3&expires=1700004000&signature="), url
    assert signer.opens(audio, query(url))
    assert signer.opens(audio, query(url).replace("format=mp3", "format=wav"))
    assert not signer.opens("/api/tasks/" + "a" * 32, query(signer.sign("/api/tasks/" + "a" * 32)))


def test_the_data_folders_signing_key_is_random_private_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    key = data_folder_key(folder)
    assert len(key) == 32 and data_folder_key(folder) == key  # kept: URLs outlive a restart
    assert stat.S_IMODE(os.stat(folder / KEY_FILE).st_mode) == 0o600
    assert data_folder_key(tmp_path / "other") != key


def test_the_access_log_keeps_no_signature(caplog: pytest.LogCaptureFixture) -> None:
    """The access log held each signed URL whole: whoever read the log could open the image
    without a key for an hour."""
    import logging

    from ris.api.signed_urls import hide_signatures_in_access_log

    hide_signatures_in_access_log()
    hide_signatures_in_access_log()  # once per process, however many apps are made
    access = logging.getLogger("uvicorn.access")
    assert sum(type(f).__name__ == "_SignatureHidden" for f in access.filters) == 1
    path = "/api/image/result/" + "a" * 32 + "?expires=1700000000&signature=" + "0f" * 32
    with caplog.at_level(logging.INFO, logger="uvicorn.access"):
        access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.2:5000", "GET", path, "1.1", 200)
        # Percent-encoded, as a client may send it: it opens the image too.
        access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.2:5000", "GET", path.replace("0f", "%30f"), "1.1", 200)
        encoded_name = path.replace("signature", "%73ignature")
        access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.2:5000", "GET", encoded_name, "1.1", 200)
        encoded_path = path.replace("/result/", "/%72esult/")  # the raw path is what is logged
        access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.2:5000", "GET", encoded_path, "1.1", 200)
        access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.2:5000", "GET", "/api/tasks?limit=5", "1.1", 200)
    *results, other = [r.getMessage() for r in caplog.records]
    for line in results:
        assert "?REDACTED" in line and "0f" not in line and "%30f" not in line, line
    assert "/api/tasks?limit=5" in other  # other queries are kept
