using Dingo.Model;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Dingo.Store;

/// <summary>What <c>{root}/schema</c> holds: the layout version of the records, and which build wrote it.</summary>
public sealed record SchemaRecord(int Version, string WrittenBy, DateTimeOffset At);

/// <summary>A process met records laid out in a schema it does not know: it must not write.</summary>
public sealed class SchemaVersionException(string message) : InvalidOperationException(message);

/// <summary>
/// The layout of Dingo's records in etcd is numbered (<c>{root}/schema</c>). A broker, cell or `dingo rotate-key`
/// checks it before its first write: an absent key is created with this build's version (a new platform); the same
/// version goes on; a higher one (written by a newer Dingo, after an upgrade this build predates) stops every write
/// of this process with a sentence naming both versions, so an old process left running, or rolled back to, never
/// rewrites records it would misread. The check is one read on the first write, made again only until it succeeds:
/// with etcd unreachable the write fails as it would have anyway (the caller's retry covers it), and the process
/// starts and waits as before. A version lower than this build's would be migrated here; version 1 is the first.
/// </summary>
public sealed class SchemaVersion
{
    /// <summary>This build's layout (docs/etcd-schema.md). Raise it with the change that makes older builds misread.</summary>
    public const int Current = 1;

    /// <summary>The exit code of a broker or cell stopped by a refusal (sysexits' EX_CONFIG; systemd does not restart it).</summary>
    public const int RefusedExitCode = 78;

    /// <summary>Whether any store of this process refused to write: its Main exits with <see cref="RefusedExitCode"/>.</summary>
    public static bool RefusedInThisProcess => _refusedInThisProcess;
    private static volatile bool _refusedInThisProcess;

    private readonly EtcdStore _store;
    private readonly string _component;
    private readonly ILogger _logger;
    private readonly Action<SchemaVersionException> _refused;
    private readonly SemaphoreSlim _once = new(1, 1);
    private volatile bool _checked;
    private volatile SchemaVersionException? _refusal;

    /// <param name="component">who writes, for the sentence ("broker", "cell cell-1", "dingo rotate-key")</param>
    /// <param name="refused">called once when the stored version is newer: the process stops</param>
    internal SchemaVersion(EtcdStore store, string component, ILogger logger, Action<SchemaVersionException> refused)
    {
        _store = store;
        _component = component;
        _logger = logger;
        _refused = refused;
    }

    /// <summary>Returns once writing is safe; throws <see cref="SchemaVersionException"/> when it never is, or etcd's own error.</summary>
    internal async Task EnsureAsync(CancellationToken ct)
    {
        if (_checked) return;
        if (_refusal is { } refused) throw refused;
        await _once.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (_checked) return;
            if (_refusal is { } again) throw again;
            var problem = await CheckAsync(ct).ConfigureAwait(false);
            if (problem is null)
            {
                _checked = true;
                return;
            }
            _refusal = problem;
            _refusedInThisProcess = true;
            _logger.LogCritical("{Problem}", problem.Message);
            _refused(problem);
            throw problem;
        }
        finally
        {
            _once.Release();
        }
    }

    private async Task<SchemaVersionException?> CheckAsync(CancellationToken ct)
    {
        var key = _store.Keys.Schema;
        for (var attempt = 0; attempt < 3; attempt++)
        {
            Versioned<string>? raw = await _store.GetRawAsync(key, ct).ConfigureAwait(false);
            if (raw is null)
            {
                var mine = new SchemaRecord(Current, Product.Version, DateTimeOffset.UtcNow);
                if (await _store.TransactUngatedAsync(new Txn().Absent(key).Put(key, mine), ct).ConfigureAwait(false))
                {
                    _logger.LogInformation("etcd {Key}: records are laid out in schema {Version} (written by this {Component}, Dingo {Product})", key, Current, _component, Product.Version);
                    return null;
                }
                continue; // another process wrote it first: judge theirs
            }
            SchemaRecord? stored;
            try { stored = Json.Deserialize<SchemaRecord>(raw.Value); }
            catch (System.Text.Json.JsonException) { stored = null; }
            if (stored is null || stored.Version < 1)
                return new SchemaVersionException($"etcd {key} holds no schema version this {_component} (Dingo {Product.Version}) can read ({Clip(raw.Value)}): " +
                                                  "not writing to a platform whose records it may misread; put back the platform's own value");
            if (stored.Version > Current)
                return new SchemaVersionException($"etcd {key}: the records are laid out in schema {stored.Version} (written by Dingo {stored.WrittenBy}), " +
                                                  $"and this {_component} (Dingo {Product.Version}) knows schema {Current} at most: upgrade it; it writes nothing until then");
            return null;
        }
        throw new InvalidOperationException($"etcd key {key} kept changing while this {_component} read it; trying again on the next write");
    }

    private static string Clip(string text) => text.Length <= 80 ? text : text[..80] + "…";
}

/// <summary>How a broker or cell gets its etcd store: the schema version checked as it starts and before any write.</summary>
public static class SchemaCheckedStore
{
    /// <param name="component">who writes, for the sentence an operator reads ("broker", "cell cell-1")</param>
    public static IServiceCollection AddSchemaCheckedEtcdStore(this IServiceCollection services, Config.DingoSettings settings, string component)
    {
        services.AddSingleton(sp =>
        {
            var store = EtcdStore.Connect(settings, sp.GetRequiredService<ILogger<EtcdStore>>(), sp.GetService<EtcdCallInterceptor>()?.Interceptor);
            // Records laid out by a newer Dingo: stop rather than rewrite them (Main exits with SchemaVersion.RefusedExitCode).
            var lifetime = sp.GetRequiredService<Microsoft.Extensions.Hosting.IHostApplicationLifetime>();
            store.CheckSchemaBeforeWrites(component, _ => lifetime.StopApplication());
            return store;
        });
        return services.AddHostedService<SchemaCheckService>();
    }
}

/// <summary>
/// Checks the schema version as soon as a broker or cell starts, not only at its first write: a platform's key is
/// there from the first process on, and a process older than the records stops at once, not when it first writes.
/// Waits for etcd as long as it takes; never blocks the start.
/// </summary>
public sealed class SchemaCheckService(EtcdStore store, ILogger<SchemaCheckService> logger) : Microsoft.Extensions.Hosting.BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            try
            {
                await store.CheckSchemaAsync(stoppingToken).ConfigureAwait(false);
                return;
            }
            catch (SchemaVersionException)
            {
                return; // said and acted on by the store's refusal
            }
            catch (Exception ex) when (ex is Grpc.Core.RpcException or InvalidOperationException && !stoppingToken.IsCancellationRequested)
            {
                logger.LogDebug("schema version not checked yet: {Error}", ex.Message);
            }
            try { await Task.Delay(TimeSpan.FromSeconds(1), stoppingToken).ConfigureAwait(false); }
            catch (OperationCanceledException) { return; }
        }
    }
}
