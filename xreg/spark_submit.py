"""``xreg register`` on a Spark cluster: the same one pass, its chunks as Spark tasks.

    spark-submit --master spark://HOST:7077 \\
        "$(python -c 'import xreg.spark_submit as m; print(m.__file__)')" \\
        s3://bucket/in.zarr s3://bucket/out.zarr [xreg register's options]

The arguments are those of ``xreg register`` (``--storage-option``, ``--reference``,
``--method``, ...; ``--scheduler`` and ``--processes`` do not apply).  The driver builds
the reference and the output's layout, each executor task reads, registers and writes
one chunk, the driver writes the displacements; a killed run resumes like
``xreg register``.  xreg (with its ``spark`` and ``s3`` extras) must be installed on the
driver and the executors, and the stores reachable from all of them.
"""

from __future__ import annotations

import sys


def main(argv=None) -> int:
    import pyspark

    from xreg import cli, spark

    sc = pyspark.SparkContext.getOrCreate()  # the master and settings spark-submit gave
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        return cli.main(["register", *argv], runner=spark.chunk_runner(sc))
    finally:
        sc.stop()


if __name__ == "__main__":
    sys.exit(main())
