"""espeak-ng 1.52 through ctypes, using the library and voice data shipped in espeakng-loader.

Why not Debian's espeak-ng: 1.51 reads Chinese wrongly; 1.52 with its `cmn` voice is right,
and the wheel needs no system package.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import espeakng_loader

from ris.backends import BackendContext, BackendError
from ris.config import ModelSpec
from ris.lanes.tts import AudioOutput, TTSBackend, TTSOutcome, TTSRequest, espeak_wpm

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE = 1

# Language tags people send, mapped to espeak-ng voice names where the two differ.
LANGUAGE_ALIASES = {
    "zh": "cmn",
    "zh-cn": "cmn",
    "zh-hans": "cmn",
    "zh-sg": "cmn",
    "cmn-cn": "cmn",
    "zh-hk": "yue",
    "zh-tw": "cmn",
    "en": "en-us",
    "en-us": "en-us",
    "en-gb": "en-gb",
}

# Which backend drives libespeak-ng in this process. Its state (output mode, the one synthesis
# callback, the voice) is global, and the two drivers need it set differently: this backend
# runs it synchronously, pyttsx3's driver asynchronously, waiting for an end-of-message event
# that the synchronous mode never sends. Sharing it hung or cut audio short when tried.
_library_user: str | None = None


def claim_library(user: str) -> None:
    """Reserve libespeak-ng for one backend kind in this worker; a second kind is refused."""
    global _library_user
    if _library_user not in (None, user):
        raise BackendError(
            "backend_conflict",
            f"the {user!r} and {_library_user!r} TTS backends both drive libespeak-ng, whose state "
            "is per process: configure one of them per TTS lane",
        )
    _library_user = user


_Callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _languages(ptr: int | None) -> list[str]:
    """Decode espeak's `languages` field: (priority byte, NUL-terminated name)* then a 0 byte."""
    out: list[str] = []
    if not ptr:
        return out
    i = 0
    while True:
        if ctypes.c_ubyte.from_address(ptr + i).value == 0:
            return out
        name = ctypes.string_at(ptr + i + 1)
        out.append(name.decode("ascii", "replace"))
        i += 2 + len(name)


def _dictionary_missing(data: Path, voice_file: Path) -> bool:
    """Whether a voice file names a dictionary the data lacks: its `dictionary`, else its
    first `language` up to the first '-' (espeak-ng's default)."""
    dictionary = None
    for line in voice_file.read_text("utf-8", "replace").splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "dictionary" and value.strip():
            dictionary = value.strip()
            break
        if key == "language" and dictionary is None and value.strip():
            dictionary = value.split()[0].split("-")[0]
    return dictionary is not None and not (data / f"{dictionary}_dict").is_file()


class _Probe(AudioOutput):
    def __init__(self) -> None:
        self.audible = False

    def emit(self, pcm: bytes) -> None:
        self.audible = self.audible or pcm.count(0) != len(pcm)

    def cancelled(self) -> bool:
        return False


class EspeakTTS(TTSBackend):
    def __init__(self, spec: ModelSpec, ctx: BackendContext) -> None:
        claim_library("espeak")
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            raise BackendError("backend_unavailable", f"espeak-ng failed to initialise ({rate})")
        self._lib = lib
        self.sample_rate = int(rate)
        # Every tag and name it answers to -> the voice name that selects it.
        self._select = self._list_voices()
        self._out: AudioOutput | None = None
        self._samples = 0
        # Keep a reference: ctypes would free the trampoline while espeak still holds it.
        self._callback = _Callback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._select = self._without_mute_voices(self._select)
        preferred = ["en-US", "zh-CN"]
        # The tags it answers to through an alias are listed too ("zh-tw"): the server routes
        # by this list, and the TTS lane refuses any voice not on it.
        aliases = {tag for tag, name in LANGUAGE_ALIASES.items() if name in self._select}
        answers_to = set(self._select) | aliases
        self.voices = tuple(preferred + sorted(answers_to - {v.lower() for v in preferred}))

    def _list_voices(self) -> dict[str, str]:
        """Voice names (an identifier's last part: "cmn", "en-gb-x-rp") and the languages each
        voice lists ("zh-yue", "en-gb"), mapped to a voice name that selects them: espeak-ng
        selects voices by name only, so "en-gb" means the voice "en" that lists it."""
        voices: list[tuple[str, list[str]]] = []
        arr = self._lib.espeak_ListVoices(None)
        i = 0
        while arr[i]:
            v = arr[i].contents
            if v.identifier:
                name = v.identifier.decode("ascii", "replace").split("/")[-1].lower()
                voices.append((name, [lang.lower() for lang in _languages(v.languages)]))
            i += 1
        select = {name: name for name, _ in voices}
        for name, languages in voices:
            for lang in languages:
                select.setdefault(lang, name)  # a voice's own name first, then the first voice listing it
        return select

    def _without_mute_voices(self, select: dict[str, str]) -> dict[str, str]:
        """`select` less the voices that speak nothing: a voice whose dictionary is not in the
        data (fo, kaa, xex in espeakng_loader's) is selected and answers every text with
        silence, so it was listed and every request for it refused as text with no sound. Only
        those whose dictionary file is missing are tried (a few ms each: lfn speaks without)."""
        data = Path(espeakng_loader.get_data_path())
        files = {p.name.lower(): p for p in (data / "lang").rglob("*") if p.is_file()}
        mute = set()
        for name in set(select.values()):
            if name not in files or not _dictionary_missing(data, files[name]):
                continue
            probe = _Probe()
            try:
                self.synthesize(TTSRequest(text="a b c, 1 2 3", voice=name), probe)
            except BackendError:  # it cannot be selected or speak at all: mute as well
                pass
            if not probe.audible:
                mute.add(name)
        return {tag: name for tag, name in select.items() if name not in mute}

    def espeak_voice(self, voice: str | None) -> str:
        """The espeak-ng voice name for a request's `voice`, or an error listing the choices."""
        tag = (voice or "en-US").lower().replace("_", "-")
        name = self._select.get(LANGUAGE_ALIASES.get(tag, tag))
        if name is None:
            raise BackendError(
                "unknown_voice",
                f"voice {voice!r} is not known to espeak-ng; try e.g. en-US, zh-CN, de, fr, es, ja",
            )
        return name

    def _on_audio(self, wav: ctypes._Pointer[ctypes.c_short] | None, n: int, _events: int) -> int:
        out = self._out
        if wav and n > 0 and out is not None:
            out.emit(ctypes.string_at(wav, n * 2))
            self._samples += n
        return 1 if (out is not None and out.cancelled()) else 0

    def synthesize(self, req: TTSRequest, out: AudioOutput) -> TTSOutcome:
        name = self.espeak_voice(req.voice)
        if self._lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise BackendError("unknown_voice", f"espeak-ng could not select voice {name!r}")
        wpm = espeak_wpm(req.speed)
        self._lib.espeak_SetParameter(_RATE, wpm, 0)
        text = req.text.encode("utf-8")
        self._out, self._samples = out, 0
        try:
            err = self._lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
        finally:
            self._out = None
        if err != 0 and not out.cancelled():
            raise BackendError("synthesis_failed", f"espeak-ng returned error {err}")
        return TTSOutcome(sample_rate=self.sample_rate, samples=self._samples, voice=name)
