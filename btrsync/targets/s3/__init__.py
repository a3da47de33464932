"""The S3 target, ``s3://BUCKET/PREFIX``: AWS S3, Backblaze B2's S3 API, SeaweedFS and friends.

One job per module (imports point down this list):

* :mod:`.target` -- ``S3Target``: the storage logic (put, ranged get, list, delete, unfinished
  uploads for ``btrsync clean``);
* :mod:`.uploads` -- bounded, parallel multipart part uploads and the ``Upload`` record;
* :mod:`.reads` -- checking a served range and streaming a response body;
* :mod:`.client` -- the botocore clients, built for Backblaze B2's rules (no boto3: start-up);
* :mod:`.errors` -- botocore, urllib3 and socket errors to btrsync errors;
* :mod:`.credentials` -- access keys from files (never the environment);
* :mod:`.settings` -- the per-target settings and their limits;
* :mod:`.objectlock` -- S3 Object Lock: which objects, until when, on whose clock (docs/immutable.md);
* :mod:`.parts` -- part sizes: limits, growth, re-cutting a stream into parts;
* :mod:`.versions` -- which stored versions of a key go when it is removed as far as it was read.

Only :mod:`.client`, :mod:`.errors`, :mod:`.reads` and :mod:`.target` import botocore; this
package's ``__init__`` imports nothing, so that ``btrsync.targets.s3.settings`` can be read without
botocore.
"""
