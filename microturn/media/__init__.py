"""All access to media containers, in one package.

A session's media is read once: ``pipeline/decode.py`` opens each file through ``container`` (the only
place that calls ``av.open`` for reading), demuxes it front to back once, and hands every decoded
frame to the consumers here: ``audio.AudioSink`` (float32 waves at 24 kHz and 16 kHz) and
``video.VideoPicker`` (one RGB frame per chunk, plus, on request, the luma trace the A/V offset
estimate reads and the frames that let ``video.repick_video`` move the picture without decoding the
file again). Stages after decode read the ``DecodedMedia`` record, never a file.

- ``container``: opening a URI (every way it can fail is a ``StageError``), the session's open
  files and their packets, decoder threads, the packet decode loop and its failure counts, and the
  longest timeline a file may claim;
- ``audio``: the audio sink and its growable buffers;
- ``video``: frame conversion, the picker, the luma trace, frame candidates and re-picking;
- ``h264``: which H.264 packets hold a picture no other picture references (left undecoded when no
  chunk takes it);
- ``spill``: the session's waves and picked frames in temporary files instead of memory, read a
  window at a time by every later pass, which hands each window's pages back (memory flat in session
  length).
"""
