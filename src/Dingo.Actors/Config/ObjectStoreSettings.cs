namespace Dingo.Config;

/// <summary>
/// Where backups go: `dingo.backups.store` in HOCON. Credentials come from DINGO_S3_ACCESS_KEY, DINGO_S3_SECRET_KEY
/// and DINGO_AZURE_CONNECTION_STRING (or HOCON). <see cref="ToString"/> never prints a secret.
/// </summary>
public sealed record ObjectStoreSettings
{
    public const string Key = "dingo.backups.store";

    /// <summary>"local", "s3" or "azure".</summary>
    public required string Kind { get; init; }
    /// <summary>local: the folder (relative: from the working directory, like data-dir).</summary>
    public string Folder { get; init; } = "";
    public int ListPageSize { get; init; } = 1000;

    public string S3Endpoint { get; init; } = "";
    public string S3Region { get; init; } = "us-east-1";
    public string S3Bucket { get; init; } = "";
    public string S3AccessKey { get; init; } = "";
    public string S3SecretKey { get; init; } = "";

    public string AzureConnectionString { get; init; } = "";
    public string AzureAccountUrl { get; init; } = "";
    public string AzureAccountName { get; init; } = "";
    public string AzureAccountKey { get; init; } = "";
    public string AzureContainer { get; init; } = "";

    /// <summary>Reads <c>backups.store</c> of the <c>dingo</c> section. <paramref name="dataDir"/> gives the default folder.</summary>
    public static ObjectStoreSettings FromConfig(Akka.Configuration.Config dingo, IReadOnlyDictionary<string, string?> env, string dataDir)
    {
        string? Env(string name) => env.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v) ? v : null;
        string S(string key, string fallback = "") => dingo.GetString($"backups.store.{key}", fallback) ?? fallback;
        var folder = S("folder");
        var settings = new ObjectStoreSettings
        {
            Kind = (Env("DINGO_BACKUP_STORE") ?? S("kind", "local")).Trim().ToLowerInvariant(),
            Folder = string.IsNullOrWhiteSpace(folder) ? Path.Combine(dataDir, "backups") : folder,
            ListPageSize = dingo.GetInt("backups.store.list-page-size", 1000),
            S3Endpoint = S("s3.endpoint"),
            S3Region = S("s3.region", "us-east-1"),
            S3Bucket = S("s3.bucket"),
            S3AccessKey = Env("DINGO_S3_ACCESS_KEY") ?? S("s3.access-key"),
            S3SecretKey = Env("DINGO_S3_SECRET_KEY") ?? S("s3.secret-key"),
            AzureConnectionString = Env("DINGO_AZURE_CONNECTION_STRING") ?? S("azure.connection-string"),
            AzureAccountUrl = S("azure.account-url"),
            AzureAccountName = S("azure.account-name"),
            AzureAccountKey = S("azure.account-key"),
            AzureContainer = S("azure.container"),
        };
        settings.Validate();
        return settings;
    }

    /// <summary>Throws an <see cref="ArgumentException"/> naming the key that is wrong.</summary>
    public void Validate()
    {
        if (ListPageSize is < 1 or > 1000) throw new ArgumentException($"{Key}.list-page-size must be 1-1000: got {ListPageSize}");
        switch (Kind)
        {
            case "local":
                if (string.IsNullOrWhiteSpace(Folder)) throw new ArgumentException($"{Key}.folder is required for kind = local");
                break;
            case "s3":
                if (string.IsNullOrWhiteSpace(S3Bucket)) throw new ArgumentException($"{Key}.s3.bucket is required for kind = s3");
                if (!string.IsNullOrWhiteSpace(S3Endpoint) && !Uri.TryCreate(S3Endpoint, UriKind.Absolute, out _))
                    throw new ArgumentException($"{Key}.s3.endpoint '{S3Endpoint}' is not an absolute URL");
                if (string.IsNullOrWhiteSpace(S3AccessKey)) throw new ArgumentException($"{Key}.s3.access-key (or DINGO_S3_ACCESS_KEY) is required for kind = s3");
                if (string.IsNullOrWhiteSpace(S3SecretKey)) throw new ArgumentException($"{Key}.s3.secret-key (or DINGO_S3_SECRET_KEY) is required for kind = s3");
                break;
            case "azure":
                if (string.IsNullOrWhiteSpace(AzureContainer)) throw new ArgumentException($"{Key}.azure.container is required for kind = azure");
                if (string.IsNullOrWhiteSpace(AzureConnectionString))
                {
                    if (string.IsNullOrWhiteSpace(AzureAccountUrl))
                        throw new ArgumentException($"{Key}.azure: either connection-string (or DINGO_AZURE_CONNECTION_STRING) or account-url + account-name + account-key is required for kind = azure");
                    if (!Uri.TryCreate(AzureAccountUrl, UriKind.Absolute, out _)) throw new ArgumentException($"{Key}.azure.account-url '{AzureAccountUrl}' is not an absolute URL");
                    if (string.IsNullOrWhiteSpace(AzureAccountName)) throw new ArgumentException($"{Key}.azure.account-name is required with account-url");
                    if (string.IsNullOrWhiteSpace(AzureAccountKey)) throw new ArgumentException($"{Key}.azure.account-key is required with account-url");
                }
                break;
            default:
                throw new ArgumentException($"{Key}.kind must be \"local\", \"s3\" or \"azure\": got \"{Kind}\"");
        }
    }

    private static string Secret(string value) => string.IsNullOrEmpty(value) ? "(none)" : "***";

    public override string ToString() => Kind switch
    {
        "local" => $"ObjectStoreSettings {{ Kind = local, Folder = {Folder} }}",
        "s3" => $"ObjectStoreSettings {{ Kind = s3, Endpoint = {(S3Endpoint == "" ? "(AWS)" : S3Endpoint)}, Region = {S3Region}, Bucket = {S3Bucket}, AccessKey = {Secret(S3AccessKey)}, SecretKey = {Secret(S3SecretKey)}, ListPageSize = {ListPageSize} }}",
        "azure" => $"ObjectStoreSettings {{ Kind = azure, ConnectionString = {Secret(AzureConnectionString)}, AccountUrl = {AzureAccountUrl}, AccountName = {AzureAccountName}, AccountKey = {Secret(AzureAccountKey)}, Container = {AzureContainer}, ListPageSize = {ListPageSize} }}",
        _ => $"ObjectStoreSettings {{ Kind = {Kind} }}",
    };
}

/// <summary>`dingo.backups`: where backups go, how often, how long they are kept.</summary>
public sealed record BackupSettings
{
    public required ObjectStoreSettings Store { get; init; }
    /// <summary>Archive WAL and take base backups of every cluster (off: nothing is backed up, restores are refused).</summary>
    public bool Enabled { get; init; } = true;
    /// <summary>Received WAL is stored within this delay (plus the upload).</summary>
    public TimeSpan FlushDelay { get; init; } = TimeSpan.FromMilliseconds(100);
    public TimeSpan BaseBackupInterval { get; init; } = TimeSpan.FromDays(1);
    public int Keep { get; init; } = 4;
    /// <summary>How long a deleted instance's backups stay recoverable.</summary>
    public TimeSpan DeletedRetention { get; init; } = TimeSpan.FromDays(7);
    public long BacklogAlarmBytes { get; init; } = 256L * 1024 * 1024;
    /// <summary>Restore drills of every instance this often (zero: only on demand).</summary>
    public TimeSpan DrillInterval { get; init; } = TimeSpan.FromDays(7);
    /// <summary>A commit waiting this long for synchronous replication (with store-sync: for the object store) raises the alarm.</summary>
    public TimeSpan CommitWaitAlarm { get; init; } = TimeSpan.FromSeconds(5);
    /// <summary>A new cluster's first base backup waits until its cell has made or started no node for this long (at most a minute; zero: at once).</summary>
    public TimeSpan FirstBackupSettle { get; init; } = TimeSpan.FromSeconds(5);

    public static BackupSettings FromConfig(Akka.Configuration.Config dingo, IReadOnlyDictionary<string, string?> env, string dataDir)
    {
        var s = new BackupSettings
        {
            Store = ObjectStoreSettings.FromConfig(dingo, env, dataDir),
            Enabled = dingo.GetBoolean("backups.enabled", true),
            FlushDelay = dingo.GetTimeSpan("backups.flush-delay", TimeSpan.FromMilliseconds(100)),
            BaseBackupInterval = dingo.GetTimeSpan("backups.base-backup-interval", TimeSpan.FromDays(1)),
            Keep = dingo.GetInt("backups.keep", 4),
            DeletedRetention = dingo.GetTimeSpan("backups.deleted-retention", TimeSpan.FromDays(7)),
            BacklogAlarmBytes = dingo.GetByteSize("backups.backlog-alarm") ?? 256L * 1024 * 1024,
            DrillInterval = dingo.GetTimeSpan("backups.drill-interval", TimeSpan.FromDays(7)),
            CommitWaitAlarm = dingo.GetTimeSpan("backups.commit-wait-alarm", TimeSpan.FromSeconds(5)),
            FirstBackupSettle = dingo.GetTimeSpan("backups.first-backup-settle", TimeSpan.FromSeconds(5)),
        };
        if (s.FirstBackupSettle < TimeSpan.Zero || s.FirstBackupSettle > TimeSpan.FromSeconds(30))
            throw new ArgumentException($"dingo.backups.first-backup-settle must be from 0 to 30s: got {s.FirstBackupSettle}");
        if (s.CommitWaitAlarm <= TimeSpan.Zero) throw new ArgumentException($"dingo.backups.commit-wait-alarm must be more than 0: got {s.CommitWaitAlarm}");
        if (s.Keep < 1) throw new ArgumentException($"dingo.backups.keep must be at least 1: got {s.Keep}");
        if (s.FlushDelay <= TimeSpan.Zero || s.FlushDelay > TimeSpan.FromSeconds(5))
            throw new ArgumentException($"dingo.backups.flush-delay must be more than 0 and at most 5s (the recovery point objective): got {s.FlushDelay.TotalMilliseconds}ms");
        if (s.BaseBackupInterval < TimeSpan.FromMinutes(1)) throw new ArgumentException($"dingo.backups.base-backup-interval must be at least 1m: got {s.BaseBackupInterval}");
        if (s.DeletedRetention < TimeSpan.Zero) throw new ArgumentException("dingo.backups.deleted-retention must not be negative");
        return s;
    }
}
