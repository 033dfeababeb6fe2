"""Helpers of the align stage (VAD, cross-talk, transcripts, whisperX, diarization, quality, A/V offset).

Heavy libraries (torch, pyannote, whisperx) are imported inside the functions that use them.
"""
