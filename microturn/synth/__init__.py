"""Synthetic two-party conversations with exact ground truth, for the demo, tests and benchmarks.

Each session is a set of real container files written with PyAV:

- ``video.mp4``: H.264 (MPEG-4 Part 2 when libx264 is missing) video whose left half brightens with
  speaker A's loudness and right half with speaker B's, plus AAC audio holding the *mixed* conversation;
- per-speaker audio (``A.wav``/``B.wav``; or one stereo file, or one mixed mono file, by ``layout``)
  with cross-talk of the other speaker carried through a room (``room``) and each microphone's own
  noise floor;
- ``transcript.json``: the words with times, as a JSON transcript sidecar;
- ``truth.json``: everything the generator intended (``SessionTruth``): speech segments, words,
  turn-taking events, offsets.

Clocks. The session clock starts at time 0 of ``video.mp4``, where its audio stream starts (and where
the earliest audio file starts). A manifest ``offset_s`` is the session time at which a source's own
time 0 sits: session time = source time + offset_s (a per-speaker file that starts late has a positive
offset; all truth times are on the session clock).
Inside the MP4 the video stream may start later than the audio stream (``video_start_s``; a
legitimate container start time, honoured through PTS). ``av_offset_ms`` is a *sync error*: the frame
shown at session time t displays the loudness at t - av_offset_ms. It is recorded only in the truth,
never in the manifest, so alignment can be checked for estimating it.

Everything is planned on integer sample positions and rendered with vectorised numpy; every file is
byte-identical for a given seed (bit-exact muxing, no timestamps, relative URIs).

Modules, in the order a session is made: ``plan`` (who says which syllables when; ``phones``: the
sounds), ``truth`` (what the plan means: segments, words, events), ``voice`` (speech-like audio),
``room`` (cross-talk), ``video`` (the picture), ``containers`` (the files), ``session`` and ``corpus``
(the steps, the manifest); ``nonspeech``: music and effects for the VAD.
"""

from microturn.synth.containers import write_audio_file
from microturn.synth.corpus import manifest_row, synthesize_corpus
from microturn.synth.nonspeech import music_and_effects
from microturn.synth.room import room_bleed, synthetic_rir, trim_rir
from microturn.synth.session import synthesize_session
from microturn.synth.truth import SessionTruth, load_truth
from microturn.synth.video import loudness_envelope

__all__ = [
    "SessionTruth",
    "load_truth",
    "loudness_envelope",
    "manifest_row",
    "music_and_effects",
    "room_bleed",
    "synthesize_corpus",
    "synthesize_session",
    "synthetic_rir",
    "trim_rir",
    "write_audio_file",
]
