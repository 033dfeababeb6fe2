"""Helpers of the align stage (VAD, cross-talk, transcripts, whisperX, diarization, quality, A/V offset).

Heavy libraries (torch, pyannote, whisperx) are imported inside the functions that use them.
"""

import warnings

# pyannote.audio warns on import, at length, that torchcodec cannot load FFmpeg: it only matters when
# pyannote reads files itself, and we always hand it waveforms decoded by PyAV. Silence exactly that
# message (once, here, before any module of this package imports pyannote or whisperX).
warnings.filterwarnings("ignore", message=r"\s*torchcodec is not installed correctly", category=UserWarning)
