using Akka.Actor;
using Akka.Cluster;
using Dingo.Store;

namespace Dingo.Health;

/// <summary>The checks brokers and cells share.</summary>
public static class ReadinessChecks
{
    /// <summary>etcd answers a linearizable read (the schema key, which may be absent): a quorum is there.</summary>
    public static ReadinessCheck Etcd(EtcdStore store) => new("etcd", async ct =>
    {
        await store.GetRawAsync(store.Keys.Schema, ct).ConfigureAwait(false);
        return null;
    });

    /// <summary>This process is an Up member of the Akka cluster (null system: none yet, or between two member systems).</summary>
    public static ReadinessCheck AkkaMember(Func<ActorSystem?> system) => new("akka", _ =>
    {
        if (system() is not { } s) return Task.FromResult<string?>("no member system yet");
        var status = Cluster.Get(s).SelfMember.Status;
        return Task.FromResult(status == MemberStatus.Up ? null : $"this member is {status.ToString().ToLowerInvariant()}, not up");
    });
}
