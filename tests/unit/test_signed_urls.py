"""Image URLs that open without the API key (ris.api.signed_urls)."""

from __future__ import annotations

from ris.api.signed_urls import UrlSigner

PATH = "/api/image/result/" + "a" * 32


def query(url: str) -> str:
    return url.partition("?")[2]


def test_a_signed_url_opens_its_image_alone_until_it_expires() -> None:
    now = [1_700_000_000.0]
    signer = UrlSigner.for_keys(["k1", "k2"], wall=lambda: now[0])
    assert signer is not None and UrlSigner.for_keys([]) is None  # no keys: nothing to sign
    url = signer.sign(PATH)
    assert url.startswith(PATH + "?expires=1700003600&signature=")
    assert signer.opens(PATH, query(url))
    assert not signer.opens("/api/image/result/" + "b" * 32, query(url))  # another image
    assert not signer.opens("/api/stats", query(url))  # another route
    assert not signer.opens(PATH, query(url).replace("expires=17", "expires=18"))  # a longer life
    assert not signer.opens(PATH, "") and not signer.opens(PATH, "expires=1&signature=")
    assert not signer.opens(PATH, "expires=" + "9" * 5000 + "&signature=x")  # no huge int parsed
    # Made with other keys (the keys changed since): refused.
    other = UrlSigner.for_keys(["k1"], wall=lambda: now[0])
    assert other is not None and not other.opens(PATH, query(url))
    # The same keys in another order, or after a restart: the same secret.
    again = UrlSigner.for_keys(["k2", "k1"], wall=lambda: now[0])
    assert again is not None and again.opens(PATH, query(url))
    now[0] += 3601
    assert not signer.opens(PATH, query(url))
