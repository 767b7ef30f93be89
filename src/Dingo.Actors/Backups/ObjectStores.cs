using Dingo.Config;

namespace Dingo.Backups;

/// <summary>Opens the object store that <see cref="ObjectStoreSettings"/> describe.</summary>
public static class ObjectStores
{
    /// <summary>The store these settings describe. A local folder is created when missing.</summary>
    public static IObjectStore CreateStore(this ObjectStoreSettings settings)
    {
        settings.Validate();
        switch (settings.Kind)
        {
            case "local":
                Directory.CreateDirectory(settings.Folder);
                return new LocalFolderObjectStore(settings.Folder);
            case "s3":
                return new S3ObjectStore(settings.S3Endpoint, settings.S3Region, settings.S3Bucket, settings.S3AccessKey, settings.S3SecretKey, settings.ListPageSize);
            default:
                return string.IsNullOrWhiteSpace(settings.AzureConnectionString)
                    ? AzureBlobObjectStore.FromAccountKey(settings.AzureAccountUrl, settings.AzureAccountName, settings.AzureAccountKey, settings.AzureContainer, settings.ListPageSize)
                    : AzureBlobObjectStore.FromConnectionString(settings.AzureConnectionString, settings.AzureContainer, settings.ListPageSize);
        }
    }
}
