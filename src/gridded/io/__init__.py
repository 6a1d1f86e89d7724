"""Where bytes live and how they are read and written: local and S3 storage, S3 settings for boto3
and GDAL, raster windows read through GDAL, COGs written through GDAL."""
