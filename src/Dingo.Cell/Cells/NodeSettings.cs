using System.Globalization;
using System.Text;
using Dingo.Postgres;

namespace Dingo.Cells;

/// <summary>The PostgreSQL settings every node gets whatever runs it (replication, HA, archiving), in one place.</summary>
internal static class NodeSettings
{
    public static StringBuilder AppendReplicationSettings(this StringBuilder conf) => conf
        .AppendLine("wal_level = replica")
        .AppendLine("max_wal_senders = 10")
        .AppendLine("max_replication_slots = 10")
        .AppendLine("hot_standby = on")
        .AppendLine("wal_log_hints = on")
        .AppendLine("wal_keep_size = '128MB'")
        // A slot nobody reads (an archiver that cannot reach its store) may hold this much WAL, no more.
        .AppendLine("max_slot_wal_keep_size = '1GB'")
        .AppendLine("hot_standby_feedback = on")
        .AppendLine("wal_receiver_status_interval = 1s")
        .AppendLine("wal_retrieve_retry_interval = 1s")
        .AppendLine("recovery_target_timeline = 'latest'");

    /// <summary>
    /// Whom a standby streams from and through which slot (a libpq conninfo naming the passfile, never the password;
    /// TLS verified against the platform CA when <paramref name="clientTlsDir"/> holds the client files), or nothing
    /// for a node that starts as a primary or has no leader yet.
    /// </summary>
    public static StringBuilder AppendStandbySettings(this StringBuilder conf, StandbyConfig? standby, string passfile, string? clientTlsDir)
    {
        if (standby?.Primary is { } primary)
        {
            var conninfo = $"host={primary.Host} port={primary.Port} user={primary.Credentials.Username} passfile={passfile} application_name={standby.ApplicationName} connect_timeout=3 {NodeTlsFiles.ClientConninfo(clientTlsDir)}";
            conf.AppendLine(CultureInfo.InvariantCulture, $"primary_conninfo = {Quote(conninfo)}")
                .AppendLine(CultureInfo.InvariantCulture, $"primary_slot_name = {Quote(standby.SlotName)}");
        }
        else
        {
            conf.AppendLine("primary_conninfo = ''").AppendLine("primary_slot_name = ''");
        }
        // syncfs only for a leader's restart in place after a crash (StandbyConfig.LeaderAfterCrash): for every start
        // after a crash, a clone or a restore it would flush the whole file system, every other node's dirty pages with it.
        if (standby is { LeaderAfterCrash: true }) conf.AppendLine("recovery_init_sync_method = syncfs");
        return conf;
    }

    /// <summary>A string value as postgresql.conf quotes it.</summary>
    public static string Quote(string value) => "'" + value.Replace("'", "''", StringComparison.Ordinal) + "'";
}
